"""What the API answers, in plain values: the analysis service (`service.Runtime`), the admission
pool, corpus statistics, figures and the probe runs. Tensors stay behind `headscope.model`."""
