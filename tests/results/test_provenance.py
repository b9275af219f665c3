from memgauge.results.provenance import collect_env, env_differences, env_hash


def test_provenance_has_every_f16_field():
    env = collect_env()
    for k in (
        "python",
        "os",
        "cpu_model",
        "cpu_cores",
        "ram_bytes",
        "packages",
        "git_sha",
        "git_dirty",
        "device_name",
        "workload_version",
        "errors",
    ):
        assert k in env
    assert env["packages"]["sqlalchemy"]


def test_env_hash_and_differences():
    a = collect_env()
    b = dict(a, packages=dict(a["packages"], torch="0.0.1"))
    assert env_hash(a) == env_hash(dict(a, hostname="elsewhere"))  # hostname does not matter
    assert env_hash(a) != env_hash(b)
    assert any(d.startswith("torch:") for d in env_differences(a, b))
