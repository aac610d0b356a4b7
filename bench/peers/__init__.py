"""The peers: the same GBT, records and broker served by other Python tools (issue 16).

Each peer's application is one small file here, written as its documentation shows; it runs
in a virtual environment of its own (setup.py) and is measured by driver.py.
"""
