"""The C sources and the one way to build and load them (`build`)."""
