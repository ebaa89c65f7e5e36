# Deployment targets, included by the top-level Makefile (`include deploy.mk`).
# Docker stack: dev-up, verify, logs-*, dev-down, clean. Cluster: k8s-deploy, k8s-delete,
# k8s-logs-sidecar (the training Job's part), k8s-deploy-monitoring, k8s-delete-monitoring
# (the optional collector and Prometheus), k8s-deploy-dashboard (the Grafana ConfigMap). Every variable can be overridden: make verify PROM_URL=http://host:9090

# Including this file must not change the including Makefile's default goal.
_deploy_mk_default_goal := $(.DEFAULT_GOAL)
# This file's directory (the repository), whichever directory make runs in.
_deploy_mk_dir := $(dir $(lastword $(MAKEFILE_LIST)))

COMPOSE ?= docker compose
DOCKER ?= docker
KUBECTL ?= kubectl
PYTHON ?= python3
# The release tag k8s/training-job/kustomization.yaml deploys: pyproject.toml's version.
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' $(_deploy_mk_dir)pyproject.toml)
IMAGE ?= ml-metrics-bridge:$(VERSION)
PROM_URL ?= http://localhost:9090
# The collector's Prometheus endpoint, for the brief's `curl -s :8889/metrics` check.
METRICS_URL ?= http://localhost:8889/metrics
# How long `verify` waits for the first points (collection interval + scrape interval).
VERIFY_WAIT_S ?= 90
# The training Job's part: what a team applies on the platform (see k8s/kustomization.yaml).
K8S_DIR ?= k8s/training-job/
K8S_MONITORING_DIR ?= k8s/monitoring/
K8S_DASHBOARD_DIR ?= k8s/grafana-dashboard/
K8S_NAMESPACE ?= ml-training

.PHONY: dev-up dev-down verify build-python logs-sidecar-python logs-ml logs-collector \
	logs-all clean deploy-clean k8s-deploy k8s-delete k8s-logs-sidecar \
	k8s-deploy-monitoring k8s-delete-monitoring k8s-deploy-dashboard

dev-up: ## Build the bridge image and start the demo stack in the background
	$(COMPOSE) up --detach --build
	@echo "Grafana    http://localhost:3000"
	@echo "Prometheus http://localhost:9090"
	@echo "Then: make verify"

dev-down: ## Stop the demo stack (volumes are kept)
	$(COMPOSE) down

verify: ## Run the brief's queries and check every expected metric; names each empty one
	$(PYTHON) deploy/verify.py --prom-url $(PROM_URL) --metrics-url="$(METRICS_URL)" \
		--wait-s $(VERIFY_WAIT_S)

build-python: ## Build the Python bridge image
	$(DOCKER) build --tag $(IMAGE) .

logs-sidecar-python: ## Follow the bridge's logs
	$(COMPOSE) logs --follow ml-metrics-bridge

logs-ml: ## Follow the mock training job's logs
	$(COMPOSE) logs --follow ml-training

logs-collector: ## Follow the OpenTelemetry Collector's logs
	$(COMPOSE) logs --follow otel-collector

logs-all: ## Follow every service's logs
	$(COMPOSE) logs --follow

# A prerequisite, not a recipe: the including Makefile may have its own `clean` recipe,
# and a second recipe for one target would replace the first.
clean: deploy-clean

deploy-clean: ## Stop the demo stack and delete its volumes (metrics, Prometheus, Grafana data)
	$(COMPOSE) down --volumes --remove-orphans

k8s-deploy: ## Apply the training Job's part, k8s/training-job/ (namespace ml-training)
	$(KUBECTL) apply -k $(K8S_DIR)

k8s-delete: ## Delete everything k8s-deploy created
	$(KUBECTL) delete -k $(K8S_DIR) --ignore-not-found

k8s-deploy-monitoring: ## Only on a cluster without a platform collector: k8s/monitoring/
	$(KUBECTL) apply -k $(K8S_MONITORING_DIR)

k8s-delete-monitoring: ## Delete what k8s-deploy-monitoring created (namespace monitoring too)
	$(KUBECTL) delete -k $(K8S_MONITORING_DIR) --ignore-not-found

k8s-deploy-dashboard: ## The Grafana dashboard ConfigMap for a platform Grafana's sidecar
	$(KUBECTL) apply -k $(K8S_DASHBOARD_DIR)

k8s-logs-sidecar: ## Follow the bridge sidecar's logs in the training Job
	$(KUBECTL) logs --namespace $(K8S_NAMESPACE) job/ml-training --container ml-metrics-bridge --follow

.DEFAULT_GOAL := $(_deploy_mk_default_goal)
