"""Corpus jobs: map/reduce over shards of a corpus, on this machine (processes) or on Ray.

A job reads a corpus lazily in shards of sequences; the map tags each shard, runs it through the
model and writes one file per shard (float64 sufficient statistics, float16 probe features);
the reduce sums the statistics. A killed job resumes from the shards already written, and the
server answers corpus questions from a finished job's merged sums (`/v1/corpus/jobs`).
"""
