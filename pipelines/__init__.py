"""The cxrflow Kubeflow pipeline: definition, compile, local run, submit and schedule."""
