from setuptools import find_packages, setup

setup(
    name="pothead",
    version="0.1.0",
    description="Reverse-HTTP load balancer for expensive, non-concurrent requests",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    # twisted.plugins is a namespace-style plugin directory, not a package
    # find_packages() can see; listing it is the form Twisted's tap howto uses.
    packages=find_packages(exclude=["tests", "tests.*", "docs", "docs.*", "benchmarks", "benchmarks.*"])
    + ["twisted.plugins"],
    # httptools is llhttp (Node.js's HTTP/1.1 parser): every HTTP message pothead
    # reads is parsed by it, strict, rather than by code of our own.
    install_requires=["twisted[tls]>=23.10", "treq", "zope.interface", "psutil", "httptools>=0.6"],
    extras_require={
        # hypothesis mutates requests for the parsing property tests; h11, a
        # second strict HTTP/1.1 parser, reads what the hub sent a worker;
        # import-linter checks the house rule in setup.cfg (hub and worker
        # never import each other, http neither, no circles).
        "test": [
            "pytest", "pytest-twisted", "pytest-timeout", "flask", "ruff", "hypothesis", "h11",
            "import-linter",
        ],
    },
)
