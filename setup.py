"""The one C extension, ``_fastpath._core``, built from _fastpath/_core.pyx and the .pyx files it
includes (Cython, pinned in pyproject.toml's build requirements, turns them into C).

Everything else about the package is in pyproject.toml. The extension is declared here rather
than in ``[tool.setuptools] ext-modules``, which setuptools still calls experimental and warns
about on every build.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("_fastpath._core", sources=["_fastpath/_core.pyx"], extra_compile_args=["-O2"])])
