# syntax=docker/dockerfile:1
# Multi-stage build: a Python stage installs tfvae and exports a model; the final
# stage is the official TF Serving image serving it on ports 8500 (gRPC) and 8501 (REST).
#
#   docker build -t tfvae-serving .                                  # trains on the built-in digits
#   docker build -t tfvae-serving --build-arg RUN_DIR=runs/digits .  # exports a run you trained
#   docker run -p 8501:8501 tfvae-serving
#   python export/tfserving_client.py --signature sample    # widths come from /metadata

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
# TF Serving releases track TensorFlow's. This project pins TF 2.21, but the newest TF
# Serving release we could establish (offline, from tensorflow/serving's own threads:
# PR #4135 "Update version for 2.20.0 release" and issue #4130, which says 2.20.0 is
# the latest and that TF 2.21 support is still to come) is 2.20.0, so that is pinned.
# Bump to 2.21.x once such a tag exists on Docker Hub (a SavedModel written by a newer
# TensorFlow may use ops an older server lacks; Docker cannot run in CI, so this image
# is not built there).
ARG SERVING_IMAGE=tensorflow/serving:2.20.0

FROM ${PYTHON_IMAGE} AS export
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
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
