"""
A small Flask app: JSON, redirects, cookies, 404, forms, streaming.
"""

from __future__ import annotations

import hashlib

from flask import Flask, Response, abort, jsonify, make_response, redirect, request, url_for


def create_app() -> Flask:
    app = Flask("pothead_fidelity")

    @app.route("/")
    def index():
        return jsonify(hello="world", numbers=[1, 2, 3], args=request.args.to_dict(flat=False))

    @app.route("/target")
    def target():
        return "you arrived\n"

    @app.route("/redirect")
    def relative_redirect():
        return redirect(url_for("target"))

    @app.route("/redirect-external")
    def external_redirect():
        return redirect(url_for("target", _external=True, q="a b"), code=301)

    @app.route("/url")
    def own_url():
        return jsonify(url=request.url, host_url=request.host_url, remote=request.remote_addr)

    @app.route("/cookies")
    def cookies():
        response = make_response(jsonify(seen=request.cookies))
        response.set_cookie("session", "abc123", httponly=True, samesite="Lax")
        response.set_cookie("theme", "dark", max_age=3600, path="/")
        response.set_cookie("old", "", expires=0)
        return response

    @app.route("/missing")
    def missing():
        abort(404)

    @app.route("/boom")
    def boom():
        abort(500, description="it broke")

    @app.route("/form", methods=["POST"])
    def form():
        return jsonify(form=request.form.to_dict(flat=False), content_type=request.content_type)

    @app.route("/upload", methods=["POST", "PUT"])
    def upload():
        files = {
            name: [f.filename, hashlib.sha256(f.read()).hexdigest()]
            for name, f in request.files.items()
        }
        return jsonify(files=files, form=request.form.to_dict())

    @app.route("/json", methods=["POST", "PATCH"])
    def echo_json():
        return jsonify(method=request.method, got=request.get_json()), 201

    @app.route("/stream")
    def stream():
        def generate():
            for i in range(20):
                yield f"line {i}\n"

        return Response(generate(), mimetype="text/plain", headers={"X-Streamed": "yes"})

    return app
