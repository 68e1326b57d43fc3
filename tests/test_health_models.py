"""`/health` and `/v1/models`: what a client or an orchestrator sees before sending audio."""

import httpx


def test_health_is_ok_once_models_are_loaded(server):
    response = httpx.get(f"{server.url}/health")
    assert response.status_code == 200
    assert "whisper-base" in response.json()["models"]


def test_models_lists_every_name_a_client_may_send(server):
    body = httpx.get(f"{server.url}/v1/models").json()
    assert body["object"] == "list"
    ids = {m["id"] for m in body["data"]}
    assert {"mimo-v2.5-asr", "whisper-base", "whisper-tiny.en", "whisper-1"} <= ids
    for model in body["data"]:
        assert model["object"] == "model" and model["owned_by"] == "harken"
        assert isinstance(model["created"], int)


def test_models_say_which_languages_they_know(server):
    """An extension for clients that offer a language list (the web page): a loaded model's
    languages, under its own name and its aliases'."""
    models = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    assert models["whisper-tiny.en"]["languages"] == ["en"]
    base = models["whisper-base"]["languages"]
    assert len(base) >= 99 and {"en", "de", "zh", "yue"} <= set(base) and base == sorted(base)
    assert models["mimo-v2.5-asr"]["languages"] == models["whisper-1"]["languages"] == base


def test_one_model_and_an_unknown_one(server, assert_error):
    body = httpx.get(f"{server.url}/v1/models/mimo-v2.5-asr").json()
    assert body["id"] == "mimo-v2.5-asr"
    assert_error(httpx.get(f"{server.url}/v1/models/nope"), 404, "model_not_found")


def test_unknown_route_gets_the_error_body(server, assert_error):
    assert_error(httpx.get(f"{server.url}/v2/nothing"), 404)


def test_openai_sdk_lists_models(openai_client):
    ids = [m.id for m in openai_client.models.list()]
    assert "mimo-v2.5-asr" in ids


def test_a_server_is_ready_only_once_its_models_are_warm(harken_home):
    """Loading ends with a second of silence read on every worker, so that the first request
    does not pay the runtime's first-call costs; a model loaded later, on a request, is not
    warmed (that request is the first call anyway)."""
    import asyncio

    from harken.config import Settings
    from harken.service.transcription import TranscriptionService

    settings = Settings(
        home=harken_home, default_model="whisper-tiny.en", preload=[], workers=2, batch_size=8
    )
    service = TranscriptionService(settings)

    async def start() -> None:
        await service.preload()
        assert service.ready.is_set()
        await service.model("whisper-base")
        await service.shutdown(1)

    asyncio.run(start())
    transcribers = service.transcribers()
    assert transcribers["whisper-tiny.en"].batcher.stats.windows == 2
    assert transcribers["whisper-base"].batcher.stats.windows == 0
