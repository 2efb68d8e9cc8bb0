"""Pure builders and the pipeline decision, without a cluster."""

from __future__ import annotations

import json
from typing import Any

from maap import builders, stages
from maap.builders import OperatorSettings
from maap.manifest import parse_manifest
from maap.pipeline import (
    ConditionUpdate,
    DeploymentState,
    JobState,
    Observed,
    decide,
    merge_conditions,
)
from maap.rbac import RULES

UID = "0000-1111"
SETTINGS = OperatorSettings(trainer_image="maap-trainer:test", progress_url="http://op:8081")


def job(**spec: Any):
    doc = {
        "apiVersion": "maap.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "demo", "namespace": "team-a"},
        "spec": {
            "model": {"preset": "smollm2-135m-instruct"},
            "dataset": {"path": "data/train.jsonl"},
            **spec,
        },
    }
    return parse_manifest(doc)


def test_every_child_is_owned_and_labelled() -> None:
    j = job(resources={"nodes": 2})
    objects = [
        builders.build_config_map(j, UID),
        builders.build_pvc(j, UID),
        builders.build_progress_secret(j, UID, "t0k3n"),
        builders.build_training_job(j, UID, SETTINGS),
        builders.build_headless_service(j, UID),
        builders.build_export_job(j, UID, SETTINGS),
        builders.build_serving_deployment(j, UID, SETTINGS),
        builders.build_serving_service(j, UID),
    ]
    for obj in objects:
        meta = obj["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["name"].startswith("demo-")
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "maap.dev/v1alpha1",
                "kind": "FineTuneJob",
                "name": "demo",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["app.kubernetes.io/instance"] == "demo"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "maap-operator"


def test_config_map_carries_the_data_plane_config_with_pod_paths() -> None:
    cm = builders.build_config_map(job(training={"maxSteps": 7}), UID)
    config = json.loads(cm["data"]["config.json"])
    assert config["outputDir"] == "/workspace/output"
    assert config["dataset"]["path"] == "/workspace/data/train.jsonl"
    assert config["training"]["maxSteps"] == 7
    assert "replicas" not in config["serving"]


def test_single_node_gpu_training_job() -> None:
    j = job(
        resources={"gpus": 2, "requests": {"cpu": 8, "memory": "32Gi"}},
        placement={
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        },
        backoffLimit=3,
        activeDeadlineSeconds=3600,
    )
    spec = builders.build_training_job(j, UID, SETTINGS)["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "maap-trainer:test"
    assert container["command"][-2:] == ["--config", "/etc/maap/config.json"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"] == {
        "cpu": "8",
        "memory": "32Gi",
        "nvidia.com/gpu": "2",
    }
    env = {e["name"]: e for e in container["env"]}
    assert env["NPROC_PER_NODE"]["value"] == "2", "one process per GPU"
    assert env["NNODES"]["value"] == "1" and env["NODE_RANK"]["value"] == "0"
    assert env["MAAP_PROGRESS_URL"]["value"] == "http://op:8081/v1/progress/team-a/demo"
    assert env["MAAP_PROGRESS_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "demo-progress"
    assert (
        pod["nodeSelector"] == {"pool": "gpu"} and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    )
    assert pod["restartPolicy"] == "Never"
    assert spec["backoffLimit"] == 3 and spec["activeDeadlineSeconds"] == 3600
    assert "completionMode" not in spec
    assert builders.build_headless_service(j, UID) is None


def test_multi_node_training_is_an_indexed_job_with_rendezvous() -> None:
    j = job(resources={"nodes": 4, "processesPerNode": 2})
    spec = builders.build_training_job(j, UID, SETTINGS)["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "demo-train"
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["MASTER_ADDR"]["value"] == "demo-train-0.demo-train.team-a.svc"
    assert env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    service = builders.build_headless_service(j, UID)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {
        "maap.dev/finetunejob": "demo",
        "app.kubernetes.io/component": "trainer",
    }


def test_export_never_asks_for_gpus_and_serving_follows_the_spec() -> None:
    j = job(resources={"gpus": 1}, serving={"replicas": 3, "port": 9000})
    export = builders.build_export_job(j, UID, SETTINGS)
    resources = export["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in json.dumps(resources)
    deployment = builders.build_serving_deployment(j, UID, SETTINGS)
    assert deployment["spec"]["replicas"] == 3
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"] == [{"name": "http", "containerPort": 9000}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "--model-dir" in container["command"]
    assert builders.service_endpoint(j) == "http://demo-server.team-a.svc:9000/v1"


def test_every_stage_command_comes_from_maap_stages() -> None:
    """One function per stage builds its command line; the pods run exactly that, and every
    setting beyond the paths comes from the mounted config.json."""
    j = job(serving={"port": 9000, "maxBatchSize": 4, "maxTokensLimit": 256})
    config = "/etc/maap/config.json"

    def command(obj: dict[str, Any]) -> list[str]:
        return obj["spec"]["template"]["spec"]["containers"][0]["command"]

    assert command(builders.build_training_job(j, UID, SETTINGS)) == stages.train_command(config)
    assert command(builders.build_export_job(j, UID, SETTINGS)) == stages.export_command(config)
    serve = command(builders.build_serving_deployment(j, UID, SETTINGS))
    assert serve == stages.serve_command(config, "/workspace/output/onnx", "demo")
    assert serve == [
        "python", "-m", "maap_trainer", "serve", "--config", config,
        "--model-dir", "/workspace/output/onnx", "--model-name", "demo",
    ]  # fmt: skip
    serving = json.loads(builders.build_config_map(j, UID)["data"]["config.json"])["serving"]
    assert (serving["port"], serving["maxBatchSize"], serving["maxTokensLimit"]) == (9000, 4, 256)


def test_existing_claim_replaces_the_per_job_claim() -> None:
    j = job(storage={"existingClaim": "shared-models"})
    assert builders.build_pvc(j, UID) is None
    volumes = builders.build_training_job(j, UID, SETTINGS)["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "workspace",
        "persistentVolumeClaim": {"claimName": "shared-models", "readOnly": False},
    } in volumes
    pvc = builders.build_pvc(job(storage={"size": "50Gi", "storageClassName": "fast"}), UID)
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "50Gi"}},
        "storageClassName": "fast",
    }


def done_job() -> JobState:
    return JobState(succeeded=True)


def test_pipeline_decisions() -> None:
    j = job()
    assert decide(j, Observed()).create == ["fetch"]
    assert decide(j, Observed(fetch=JobState(active=1))).phase == "Fetching"
    assert decide(j, Observed(fetch=JobState(suspended=True))).phase == "Suspended"
    bad_row = decide(j, Observed(fetch=JobState(failed=True, message="data.jsonl:3: bad row")))
    assert (bad_row.phase, bad_row.create) == ("Failed", [])
    assert (
        ConditionUpdate("Failed", "True", "FetchFailed", "data.jsonl:3: bad row")
        in bad_row.conditions
    )
    assert decide(j, Observed(fetch=done_job())).create == ["train"]
    assert decide(j, Observed(fetch=done_job(), train=JobState(active=0))).phase == "Pending"
    assert (
        decide(j, Observed(fetch=done_job(), train=JobState(suspended=True))).phase == "Suspended"
    )
    assert decide(j, Observed(fetch=done_job(), train=JobState(active=1))).phase == "Training"
    failed = decide(
        j, Observed(fetch=done_job(), train=JobState(failed=True, message="error: bad row"))
    )
    assert failed.phase == "Failed"
    assert (
        ConditionUpdate("Failed", "True", "TrainingFailed", "error: bad row") in failed.conditions
    )
    step = decide(j, Observed(fetch=done_job(), train=done_job()))
    assert (step.phase, step.create) == ("Exporting", ["export"])
    step = decide(j, Observed(fetch=done_job(), train=done_job(), export=done_job()))
    assert (step.phase, step.create) == ("Serving", ["serving"])
    ready = decide(
        j,
        Observed(
            fetch=done_job(),
            train=done_job(),
            export=done_job(),
            serving=DeploymentState(replicas=1, ready=1, updated=1),
        ),
    )
    assert (
        ConditionUpdate("ServingReady", "True", "Ready", "1/1 replicas ready") in ready.conditions
    )
    # A pod of the older spec still serves: ready, but the rollout is not over.
    rolling = decide(
        j,
        Observed(
            fetch=done_job(),
            train=done_job(),
            export=done_job(),
            serving=DeploymentState(replicas=2, ready=2, updated=1),
        ),
    )
    assert [c.reason for c in rolling.conditions if c.type == "ServingReady"] == ["RollingOut"]
    assert (
        decide(
            job(serving={"enabled": False}),
            Observed(fetch=done_job(), train=done_job(), export=done_job()),
        ).phase
        == "Succeeded"
    )
    assert (
        decide(job(export={"enabled": False}), Observed(fetch=done_job(), train=done_job())).phase
        == "Succeeded"
    )
    export_failed = decide(
        j,
        Observed(
            fetch=done_job(),
            train=done_job(),
            export=JobState(failed=True, reason="BackoffLimitExceeded"),
        ),
    )
    assert export_failed.phase == "Failed"
    assert (
        ConditionUpdate("Failed", "True", "ExportFailed", "BackoffLimitExceeded")
        in export_failed.conditions
    )


def test_job_state_from_a_real_job_status() -> None:
    state = JobState.from_job(
        {
            "spec": {"suspend": False},
            "status": {
                "failed": 1,
                "conditions": [
                    {"type": "FailureTarget", "status": "True"},
                    {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                     "message": "Job was active longer than specified deadline"},
                ],
            },
        }
    )  # fmt: skip
    assert state.failed and state.reason == "DeadlineExceeded"
    assert state.message == "Job was active longer than specified deadline"


def test_condition_transition_time_moves_only_on_status_change() -> None:
    first = merge_conditions([], [ConditionUpdate("Trained", "False", "Running")], 1)
    first[0]["lastTransitionTime"] = "2026-01-01T00:00:00Z"
    same = merge_conditions(first, [ConditionUpdate("Trained", "False", "Still")], 2)
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert same[0]["reason"] == "Still" and same[0]["observedGeneration"] == 2
    flipped = merge_conditions(same, [ConditionUpdate("Trained", "True", "Done")], 2)
    assert flipped[0]["lastTransitionTime"] != "2026-01-01T00:00:00Z"


def test_rbac_covers_the_kinds_the_operator_creates() -> None:
    creatable = {r for _, resources, verbs in RULES if "create" in verbs for r in resources}
    assert {"configmaps", "persistentvolumeclaims", "services", "secrets", "jobs", "deployments",
            "events"} <= creatable  # fmt: skip
    assert all("*" not in verbs and "*" not in resources for _, resources, verbs in RULES)


def test_serving_auth_secret_and_preset_memory_default() -> None:
    off = job()
    assert builders.build_serving_auth_secret(off, UID, "x") is None
    container = builders.build_serving_deployment(off, UID, SETTINGS)["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert "--auth-token-env" not in container["command"]
    assert container["command"][4:6] == ["--config", "/etc/maap/config.json"]

    on = job(serving={"auth": {"enabled": True}})
    secret = builders.build_serving_auth_secret(on, UID, "s3cret")
    assert secret["metadata"]["name"] == "demo-serving-auth"
    assert secret["stringData"] == {"token": "s3cret"}
    container = builders.build_serving_deployment(on, UID, SETTINGS)["spec"]["template"]["spec"][
        "containers"
    ][0]
    # The config says where the token is; the pod fills that variable from the Secret.
    assert "--auth-token-env" not in container["command"]
    config = json.loads(builders.build_config_map(on, UID)["data"]["config.json"])
    env = {e["name"]: e for e in container["env"]}
    token_ref = env[config["serving"]["authTokenEnv"]]["valueFrom"]["secretKeyRef"]
    assert token_ref == {"name": "demo-serving-auth", "key": "token"}

    own = job(serving={"auth": {"enabled": True, "secretName": "team-token"}})
    assert builders.build_serving_auth_secret(own, UID, "x") is None
    assert builders.serving_auth_secret_name(own) == "team-token"

    # No memory request given: the preset's minimum, so the pod lands where it fits.
    resources = builders.build_training_job(job(), UID, SETTINGS)["spec"]["template"]["spec"][
        "containers"
    ][0]["resources"]
    assert resources["requests"]["memory"] == "4Gi"


def _pod_specs(j) -> list[dict[str, Any]]:
    return [
        builders.build_training_job(j, UID, SETTINGS)["spec"]["template"]["spec"],
        builders.build_export_job(j, UID, SETTINGS)["spec"]["template"]["spec"],
        builders.build_serving_deployment(j, UID, SETTINGS)["spec"]["template"]["spec"],
    ]


def test_every_pod_meets_pod_security_restricted() -> None:
    """The restricted profile's rules, field by field (the API server's admission checks
    the same on the real control plane: tests/controlplane, tests/node)."""
    for pod in _pod_specs(job(resources={"nodes": 2})):
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        for volume in pod["volumes"]:
            assert set(volume) - {"name"} <= {"configMap", "persistentVolumeClaim", "emptyDir"}
        writable = set()
        for container in pod["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"] == {"drop": ["ALL"]}
            assert ctx["readOnlyRootFilesystem"] is True
            assert "privileged" not in ctx and "ports" not in ctx
            for port in container.get("ports", []):
                assert "hostPort" not in port
            writable |= {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["HOME"] == "/tmp"
        assert {"/tmp", "/dev/shm"} <= writable, "a read-only root needs writable scratch space"


def test_training_job_survives_preemption_and_fails_fast_on_user_errors() -> None:
    spec = builders.build_training_job(job(), UID, SETTINGS)["spec"]
    assert spec["podReplacementPolicy"] == "Failed"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "Ignore",
        "onExitCodes": {"containerName": "train", "operator": "In", "values": [75]},
    }
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert rules[2]["action"] == "FailJob" and rules[2]["onExitCodes"]["values"] == [2]
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    assert spec["template"]["spec"]["restartPolicy"] == "Never", "podFailurePolicy needs it"


def test_serving_rolls_without_losing_capacity_or_requests() -> None:
    deployment = builders.build_serving_deployment(job(serving={"replicas": 2}), UID, SETTINGS)
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    prestop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    # The preStop sleep plus the server's 30 s drain fit in the grace period.
    assert pod["terminationGracePeriodSeconds"] >= prestop + 30


def test_every_stage_pod_reports_its_progress_and_summary_to_the_operator() -> None:
    """The final report of each stage carries what status shows of it (fetch: its files,
    train: status.metrics, export: status.export, publish: the published artifacts), so
    every stage's pod gets the progress API's URL and the job's token."""
    from maap.transfer_builders import build_fetch_job, build_publish_job

    j = job(output={"path": "s3://bucket/runs/"})
    for built in (build_fetch_job(j, UID, SETTINGS), builders.build_training_job(j, UID, SETTINGS),
                  builders.build_export_job(j, UID, SETTINGS),
                  build_publish_job(j, UID, SETTINGS)):  # fmt: skip
        [container] = built["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        name = built["metadata"]["name"]
        assert env["MAAP_PROGRESS_URL"]["value"] == "http://op:8081/v1/progress/team-a/demo", name
        secret = env["MAAP_PROGRESS_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
        assert secret == "demo-progress", name
