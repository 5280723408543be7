"""An admission webhook for berth's tests: HTTPS on 127.0.0.1 (the port it prints),
with the certificate and key given. Every review it gets is appended to reviews.jsonl
in the certificate directory.

  /mutate    adds the label mutated=yes (a JSON patch)
  /validate  refuses a ConfigMap with a data key named "forbidden"
  /slow      answers after three seconds
  /convert   a ConversionReview of Widgets: v1's spec.size (a string) is v2's spec.count
             (an integer); the label converted-by=webhook is added
  /convert-fail  a ConversionReview answered with a failure
"""
import base64
import http.server
import json
import os
import ssl
import sys
import time

DIR = sys.argv[1]


class Hook(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        review = json.loads(self.rfile.read(length))
        request = review["request"]
        with open(os.path.join(DIR, "reviews.jsonl"), "a") as log:
            log.write(json.dumps({"path": self.path, "request": request}) + "\n")
        if self.path.startswith("/convert"):
            return self.convert(request)
        response = {"uid": request["uid"], "allowed": True}
        obj = request.get("object") or {}
        if self.path == "/mutate":
            labels = (obj.get("metadata") or {}).get("labels")
            patch = [{"op": "add", "path": "/metadata/labels", "value": {}}] if labels is None else []
            patch.append({"op": "add", "path": "/metadata/labels/mutated", "value": "yes"})
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        elif self.path == "/validate":
            if "forbidden" in (obj.get("data") or {}):
                response = {"uid": request["uid"], "allowed": False,
                            "status": {"code": 403, "message": "the key forbidden is not allowed"}}
            else:
                response["warnings"] = ["checked by the guard"]
        elif self.path == "/slow":
            time.sleep(3)
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                           "response": response}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


    def convert(self, request):
        desired = request["desiredAPIVersion"]
        converted = []
        for obj in request["objects"]:
            spec = obj.get("spec") or {}
            if desired.endswith("/v2") and "size" in spec:
                spec["count"] = int(spec.pop("size"))
            elif desired.endswith("/v1") and "count" in spec:
                spec["size"] = str(spec.pop("count"))
            obj["spec"] = spec
            obj["apiVersion"] = desired
            obj.setdefault("metadata", {}).setdefault("labels", {})["converted-by"] = "webhook"
            obj["metadata"]["name"] = "renamed-by-webhook"
            converted.append(obj)
        if self.path == "/convert-fail":
            result = {"status": "Failure", "message": "cannot convert widgets today"}
            converted = []
        else:
            result = {"status": "Success"}
        body = json.dumps({"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
                           "response": {"uid": request["uid"], "convertedObjects": converted,
                                        "result": result}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(os.path.join(DIR, "tls.crt"), os.path.join(DIR, "tls.key"))
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
