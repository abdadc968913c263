from __future__ import annotations

import re

import pytest

from inferq.settings import Settings, SettingsError, gpu_of_queue, gpu_queue


def test_local_defaults_work_without_any_variable() -> None:
    settings = Settings.from_env({})
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.broker_url == settings.result_backend == settings.redis_url
    assert settings.database_url.startswith("sqlite:///") and settings.database_url.endswith("inferq.db")
    assert settings.gpus == (0, 1)
    assert settings.triton_urls == {0: "http://127.0.0.1:8000", 1: "http://127.0.0.1:8010"}
    assert settings.queues == ["gpu.0", "gpu.1", "control"]
    assert settings.api_port == 8080


def test_environment_is_coerced() -> None:
    settings = Settings.from_env(
        {
            "INFERQ_GPUS": "0,1,3",
            "INFERQ_TRITON_URLS": "0=http://a:8000,1=http://b:8000,3=http://c:8000",
            "INFERQ_SYNC_TIMEOUT": "2.5",
            "INFERQ_API_PORT": "9090",
            "INFERQ_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
            "CUDA_VISIBLE_DEVICES": "3",
        }
    )
    assert settings.gpus == (0, 1, 3)
    assert settings.triton_urls[3] == "http://c:8000"
    assert settings.sync_timeout == 2.5 and settings.api_port == 9090
    assert settings.broker_url.startswith("amqp://") and settings.result_backend == settings.redis_url
    assert settings.cuda_visible_devices == "3"


def test_one_triton_url_serves_every_gpu() -> None:
    settings = Settings.from_env({"INFERQ_GPUS": "0,1", "INFERQ_TRITON_URLS": "http://triton:8000"})
    assert settings.triton_urls == {0: "http://triton:8000", 1: "http://triton:8000"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"INFERQ_API_PORT": "eighty"}, "INFERQ_API_PORT"),
        ({"INFERQ_GPUS": "0,x"}, "INFERQ_GPUS"),
        ({"INFERQ_GPUS": "0,1", "INFERQ_TRITON_URLS": "0=http://a:1"}, "no Triton for GPU(s) [1]"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env(env)


def test_as_env_round_trips() -> None:
    settings = Settings.from_env(
        {"INFERQ_GPUS": "2", "INFERQ_TRITON_URLS": "2=http://x:1", "INFERQ_S3_BUCKET": "b"}
    )
    assert Settings.from_env(settings.as_env()) == settings
    assert "secret" not in settings.describe()


def test_gpu_queue_names() -> None:
    assert gpu_queue(3) == "gpu.3" and gpu_of_queue("gpu.3") == 3
    assert gpu_of_queue("control") is None and gpu_of_queue("gpu.x") is None


def test_settings_mask_url_passwords() -> None:
    settings = Settings(
        redis_url="redis://:redis-pw@cache:6379/0",
        broker_url="amqp://user:amqp-pw@rabbit:5672//",
        database_url="postgresql://inferq:pg-pw@db:5432/inferq",
        s3_secret_key="s3-pw",
        triton_urls={0: "http://t:triton-pw@triton:8000", 1: "http://triton1:8000"},
    )
    text = settings.describe()
    for secret in ("redis-pw", "amqp-pw", "pg-pw", "s3-pw", "triton-pw"):
        assert secret not in text
    assert "INFERQ_DATABASE_URL=postgresql://inferq:***@db:5432/inferq" in text
    assert "INFERQ_BROKER_URL=amqp://user:***@rabbit:5672//" in text
