# syntax=docker/dockerfile:1
# Multi-stage build: a Python stage installs tfvae and exports a model; the final
# stage is the official TF Serving image serving it on ports 8500 (gRPC) and 8501 (REST).
#
#   docker build -t tfvae-serving .                                  # trains on the built-in digits
#   docker build -t tfvae-serving --build-arg RUN_DIR=runs/digits .  # exports a run you trained
#   docker run -p 8501:8501 tfvae-serving
#   python export/tfserving_client.py --signature sample    # widths come from /metadata

# Python: the newest 3.11 patch release we could establish offline (3.11.17: public Dockerfiles
# from Oct 2026 pin python:3.11.17-slim-bookworm); bookworm, as before.
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm
# TF Serving releases track TensorFlow's, and this project writes SavedModels with TF 2.21.
# Evidence that 2.21.0 exists, established offline: `tensorflow-serving-api` 2.21.0 is on the
# package index (`pip index versions tensorflow-serving-api`, Dec 2026), and a public TF Serving
# tutorial (subirroy71/tfserving_tutorial) pulls `tensorflow/serving:2.21.0` in its CI and ran
# its docs against it. Its digest could not be established offline (no public source we could
# search records it; those that record tensorflow/serving digests are for 1.15.0 and 2.11), and
# a digest is never guessed here. Pin it by digest where Docker runs, tag kept beside it:
#   docker buildx imagetools inspect tensorflow/serving:2.21.0   # prints "Digest: sha256:..."
#   ARG SERVING_IMAGE=tensorflow/serving:2.21.0@sha256:<that digest>
# Docker cannot run in CI here, so this image is not built there; tests/test_deployment.py
# builds and runs the wheel from exactly the files the first stage copies.
ARG SERVING_IMAGE=tensorflow/serving:2.21.0

FROM ${PYTHON_IMAGE} AS export
WORKDIR /src
# What `pip install .` needs, and nothing else (tests/test_deployment.py builds a wheel from
# exactly the files these COPY lines name): the metadata, the package and tfvae_main.py, the
# `tfvae` console script's entry point.
COPY pyproject.toml setup.py README.md tfvae_main.py ./
COPY tfvae ./tfvae
RUN pip install --no-cache-dir .
# The build context (see .dockerignore) may hold runs trained outside Docker.
COPY . /context
ARG RUN_DIR=""
RUN set -eu; \
    if [ -n "$RUN_DIR" ]; then run="/context/$RUN_DIR"; \
    else run=/tmp/run; tfvae train --output "$run" --quiet; fi; \
    tfvae export "$run" --format saved_model --output /models --model-name tfvae --version 1

FROM ${SERVING_IMAGE}
COPY --from=export /models/tfvae /models/tfvae
# The image's entrypoint serves ${MODEL_BASE_PATH}/${MODEL_NAME} = /models/tfvae; the
# config file is there for `docker run ... --model_config_file=/models/models.config`.
COPY export/models.config /models/models.config
ENV MODEL_NAME=tfvae
EXPOSE 8500 8501
