// Package deploy holds no code: it is the module of the tests that check the
// deployment files beside it (the Kubernetes manifests, the compose files,
// the Prometheus rules and the Grafana dashboard) against Kubernetes' own
// types and against the sweeper binary they configure. It is a module of its
// own so the sweeper's module never depends on the Kubernetes API.
package deploy
