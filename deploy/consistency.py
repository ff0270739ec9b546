"""Checks what schema validators cannot: that the Dockerfile and the Kubernetes objects agree.

    python deploy/consistency.py [Dockerfile] [deploy/kubernetes.yaml]

The Service must select the Deployment's pods and name a port the container has; the HPA must
target the Deployment and have CPU requests to scale on; every probe must ask /health on the
container's port; the pods must run as the image's non-root user, on the port the image exposes
and its health check probes. Prints each problem and exits 1 if there is any.
"""

import re
import shlex
import sys

import yaml


def dockerfile_facts(path):
    """The runtime stage's EXPOSE, USER uid, HEALTHCHECK command and ENTRYPOINT."""
    with open(path, encoding="utf-8") as file:
        text = file.read()
    # Join continued lines; instructions of the last stage (the runtime image) win.
    lines = re.sub(r"\\\n", " ", text).splitlines()
    facts = {}
    for line in lines:
        words = line.strip().split(None, 1)
        if len(words) == 2 and words[0] in ("EXPOSE", "USER", "HEALTHCHECK", "ENTRYPOINT"):
            facts[words[0]] = words[1].strip()
    return facts


def main(dockerfile="Dockerfile", manifest="deploy/kubernetes.yaml"):
    problems = []

    def check(ok, message):
        if not ok:
            problems.append(message)

    image = dockerfile_facts(dockerfile)
    exposed = int(image["EXPOSE"].split("/")[0])
    uid = int(image["USER"].split(":")[0])
    check(uid != 0, "the image runs as root")
    health = image.get("HEALTHCHECK", "")
    check(f"/dev/tcp/127.0.0.1/{exposed}" in health, "HEALTHCHECK probes another port than EXPOSE")
    check("GET /health " in health, "HEALTHCHECK does not ask /health")
    entrypoint = yaml.safe_load(image["ENTRYPOINT"])
    check(
        entrypoint[:2] == ["bertqa", "serve"] and "0.0.0.0" in entrypoint,
        f"ENTRYPOINT {shlex.join(entrypoint)} does not serve on all interfaces",
    )

    with open(manifest, encoding="utf-8") as file:
        objects = {doc["kind"]: doc for doc in yaml.safe_load_all(file) if doc}
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler"):
        check(kind in objects, f"no {kind}")
    if problems:
        return problems
    deployment, service, hpa = (
        objects[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler")
    )
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    check(
        deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(),
        "the Deployment's selector does not match its pods",
    )
    check(
        service["spec"]["selector"].items() <= labels.items(),
        "the Service selects no pod of the Deployment",
    )

    security = pod["spec"].get("securityContext", {})
    check(security.get("runAsNonRoot") is True, "pods may run as root")
    check(
        security.get("runAsUser") == uid,
        f"runAsUser {security.get('runAsUser')} is not the image's uid {uid}",
    )

    for container in pod["spec"]["containers"]:
        name = container["name"]
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        check(exposed in ports.values(), f"{name}: no containerPort {exposed} (the image's EXPOSE)")
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            check(
                target in ports or target in ports.values(),
                f"Service port {port['port']} targets {target!r}, not a port of {name}",
            )
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = container.get(probe, {}).get("httpGet")
            if probe != "startupProbe":
                check(get is not None, f"{name}: no {probe} over HTTP")
            if get:
                check(get["path"] == "/health", f"{name}: {probe} asks {get['path']}, not /health")
                check(
                    get["port"] in ports or get["port"] in ports.values(),
                    f"{name}: {probe} port {get['port']!r} is not a container port",
                )
        requests = container.get("resources", {}).get("requests", {})
        check("cpu" in requests, f"{name}: no CPU request, so the HPA has nothing to scale on")
        args = container.get("args", [])
        if "--port" in args:
            check(
                int(args[args.index("--port") + 1]) == exposed,
                f"{name}: --port differs from the image's health check port",
            )

    target = hpa["spec"]["scaleTargetRef"]
    check(
        target["kind"] == "Deployment" and target["name"] == deployment["metadata"]["name"],
        "the HPA does not target the Deployment",
    )
    check(
        any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"].get("metrics", [])),
        "the HPA does not scale on CPU",
    )
    check(
        hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"],
        "HPA minReplicas > maxReplicas",
    )
    return problems


if __name__ == "__main__":
    found = main(*sys.argv[1:])
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    if not found:
        print("Dockerfile and Kubernetes objects agree")
    sys.exit(1 if found else 0)
