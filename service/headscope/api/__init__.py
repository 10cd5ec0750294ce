"""HTTP: request guards, the uvicorn protocol, dependencies and one router per resource."""
