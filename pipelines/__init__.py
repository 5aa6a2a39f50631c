"""The kubevae pipeline: the DAG, and how to compile, run, submit and schedule it."""
