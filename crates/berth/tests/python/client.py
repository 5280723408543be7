"""The Kubernetes Python client (32.0.1, for Kubernetes 1.32) against berth server.

Run by tests/python_client.rs with the server's kubeconfig as its argument; prints
"ok" when every check holds, and fails with the assertion otherwise.
"""
import base64
import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
ns = "default"


def cm(name, labels=None, data=None):
    return client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {}), data=data or {}
    )


# create, get, list with selectors
core.create_namespaced_config_map(ns, cm("py-a", {"tier": "web"}, {"k": "1"}))
core.create_namespaced_config_map(ns, cm("py-b", {"tier": "db"}))
got = core.read_namespaced_config_map("py-a", ns)
assert got.data == {"k": "1"}, got.data
web = core.list_namespaced_config_map(ns, label_selector="tier=web")
assert [c.metadata.name for c in web.items] == ["py-a"], web.items
named = core.list_namespaced_config_map(ns, field_selector="metadata.name=py-b")
assert [c.metadata.name for c in named.items] == ["py-b"]

# replace with a stale resourceVersion: 409
fresh = core.read_namespaced_config_map("py-a", ns)
fresh.data = {"k": "2"}
core.replace_namespaced_config_map("py-a", ns, fresh)
try:
    core.replace_namespaced_config_map("py-a", ns, fresh)
    raise AssertionError("a stale replace succeeded")
except ApiException as err:
    assert err.status == 409, err

# patch (the client sends strategic merge patch for dicts)
patched = core.patch_namespaced_config_map("py-b", ns, {"data": {"x": "y"}})
assert patched.data == {"x": "y"}, patched.data

# a watch that receives ADDED, MODIFIED and DELETED (the client sends watch=True)
start = core.list_namespaced_config_map(ns).metadata.resource_version
seen = []
done = threading.Event()


def follow():
    w = watch.Watch()
    for event in w.stream(
        core.list_namespaced_config_map, ns, resource_version=start, timeout_seconds=20
    ):
        if event["object"].metadata.name == "py-w":
            seen.append(event["type"])
        if event["type"] == "DELETED" and event["object"].metadata.name == "py-w":
            w.stop()
    done.set()


thread = threading.Thread(target=follow)
thread.start()
core.create_namespaced_config_map(ns, cm("py-w"))
core.patch_namespaced_config_map("py-w", ns, {"data": {"a": "b"}})
core.delete_namespaced_config_map("py-w", ns)
assert done.wait(20), "the watch never ended"
assert seen == ["ADDED", "MODIFIED", "DELETED"], seen

# metadata-only lists, gets and watches (client-go's metadata client asks this way)
accept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
listed, code, _ = core.api_client.call_api(
    "/api/v1/namespaces/default/configmaps", "GET", header_params={"Accept": accept},
    response_type="object", auth_settings=["BearerToken"])
assert code == 200 and listed["kind"] == "PartialObjectMetadataList", listed
names = [item["metadata"]["name"] for item in listed["items"]]
assert "py-a" in names and all(set(i) == {"kind", "apiVersion", "metadata"} for i in listed["items"]), listed
one, _, _ = core.api_client.call_api(
    "/api/v1/namespaces/default/configmaps/py-a", "GET",
    header_params={"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"},
    response_type="object", auth_settings=["BearerToken"])
assert one["kind"] == "PartialObjectMetadata" and "data" not in one, one
raw = core.api_client.call_api(
    "/api/v1/namespaces/default/configmaps", "GET", query_params=[("watch", "true"), ("timeoutSeconds", "1")],
    header_params={"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"},
    auth_settings=["BearerToken"], _preload_content=False)[0]
import json
events = [json.loads(line) for line in raw.data.decode().splitlines() if line.strip()]
assert events and all(e["object"]["kind"] == "PartialObjectMetadata" for e in events), events

# delete: a Status of success, as Kubernetes answers for ConfigMaps
status = core.delete_namespaced_config_map("py-a", ns)
assert status.status == "Success" and status.details.name == "py-a", status
try:
    core.read_namespaced_config_map("py-a", ns)
    raise AssertionError("deleted but still there")
except ApiException as err:
    assert err.status == 404, err

# a Secret from stringData comes back as data, without stringData
secret = client.V1Secret(
    metadata=client.V1ObjectMeta(name="py-secret"), string_data={"user": "alice"}
)
made = core.create_namespaced_secret(ns, secret)
assert made.string_data is None, made.string_data
read = core.read_namespaced_secret("py-secret", ns)
assert base64.b64decode(read.data["user"]) == b"alice", read.data
assert read.string_data is None
print("ok")
