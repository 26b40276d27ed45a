"""ado-ray on Kubernetes without the KubeRay operator.

A Ray head pod (a one-replica Deployment) runs `ray start --head` with Ray's own autoscaler,
which creates and deletes plain worker pods through the external node provider
(`node_provider.py`). `spec.py` holds the one description of such a cluster (`ClusterSpec`);
`render.py` turns it into the Kubernetes objects, the kustomize tree in `deploy/` and the
autoscaler config in `cluster/k8s.yaml` (`ado cluster render`).
"""
