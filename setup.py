from setuptools import find_packages, setup

setup(
    name="pothead",
    version="0.1.0",
    description="Reverse-HTTP load balancer for expensive, non-concurrent requests",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    # Twisted 26.10, the lowest the suite passes on (below), needs 3.10.
    python_requires=">=3.10",
    # twisted.plugins is a namespace-style plugin directory, not a package
    # find_packages() can see; listing it is the form Twisted's tap howto uses.
    packages=find_packages(exclude=["tests", "tests.*", "docs", "docs.*", "benchmarks", "benchmarks.*"])
    + ["twisted.plugins"],
    # The hub's status page (its --admin port's /), served from the package.
    package_data={"pothead.hub": ["status_page.html"]},
    # httptools is llhttp (Node.js's HTTP/1.1 parser): every HTTP message pothead
    # reads is parsed by it, strict, rather than by code of our own.
    #
    # Twisted: the range the whole suite has passed on.  pothead relies on a
    # few private Twisted APIs (docs/twisted.md, pinned by
    # tests/test_twisted_private.py), so a Twisted outside it is untested, and
    # CI also runs the suite on the newest Twisted on PyPI, past this pin.
    # Suite runs: 26.10.0 passes.  23.10.0, 24.3.0, 24.7.0 and 26.4.0 fail
    # test_end_to_end's bad --app test: their twistd exits 0 after a usage
    # error (26.10 exits 1).  23.10.0 and 24.3.0 also order twisted.web's
    # response headers otherwise (Transfer-Encoding first), which the
    # byte-for-byte fidelity tests catch.  The upper bound is the next
    # major, not yet tested.
    install_requires=[
        "twisted[tls]>=26.10,<27", "treq", "zope.interface", "psutil", "httptools>=0.6",
        # The hub's /metrics: the exposition format and its Twisted resource,
        # as Prometheus's own client writes them.
        "prometheus_client>=0.20",
    ],
    extras_require={
        # hypothesis mutates requests for the parsing property tests; h11, a
        # second strict HTTP/1.1 parser, reads what the hub sent a worker;
        # import-linter checks the house rule in setup.cfg (hub and worker
        # never import each other, http neither, no circles).
        "test": [
            "pytest", "pytest-twisted", "pytest-timeout", "flask", "ruff", "hypothesis", "h11",
            "import-linter",
            # trustme makes a throwaway CA and certificates for tests/test_tls.py.
            "trustme",
            # gunicorn is one of the real servers a sidecar worker fronts in
            # tests/test_sidecar.py.
            "gunicorn",
        ],
    },
)
