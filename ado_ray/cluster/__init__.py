"""ado-ray on Kubernetes without the KubeRay operator.

A Ray head pod (a one-replica Deployment) runs `ray start --head` with Ray's own autoscaler,
which creates and deletes plain worker pods through the external node provider
(`node_provider.py`). `spec.py` holds the one description of such a cluster (`ClusterSpec`);
`objects.py` builds its Kubernetes objects and `overlays.py` the kustomize overlays' extras;
`render.py` writes them out with the autoscaler config: `deploy/` and `cluster/k8s.yaml`
(`ado cluster render`); `apply.py` applies them (`ado cluster up/down/status`). `jobs.py`
submits `ado batch` as a Ray job (`--context k8s`), `ray_auth.py` handles Ray's token, and
`local.py` starts a local autoscaling cluster with Ray's fake multi-node provider, or a plain
head that outlives a run; `dashboard.py` finds a run's Ray dashboard and says how to reach it.
"""
