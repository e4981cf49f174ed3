"""Build of record. Metadata lives in pyproject.toml; this file adds the compiled extension built from csrc/."""
from setuptools import setup

setup()
