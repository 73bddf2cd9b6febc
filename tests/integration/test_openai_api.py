"""The OpenAI-compatible routes (/v1/embeddings, /v1/models) through the official
``openai`` client and raw httpx, against the real uvicorn server, real PostgreSQL and
the real model."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import numpy as np
import numpy.typing as npt
import openai
import pytest

from indexer.embedding import Embedder
from indexer.embedding.describe import describe_folder
from indexer.http.openai_api import TOKEN_IDS
from indexer.limits import MAX_INPUTS
from indexer.settings import Settings
from indexer.store import Store

from .test_http import Api, serve

FIXTURES = Path(__file__).parent.parent / "fixtures" / "models"
MODEL = "all-MiniLM-L6-v2"
TEXTS = ["PostgreSQL is a database", "Cats sleep a lot", "Crème brûlée, 東京 🚀"]


@pytest.fixture
def api(settings: Settings, database: str, embedder: Embedder) -> Iterator[Api]:
    with serve(settings, database, embedder) as api:
        yield api


def client(api: Api, key: str = "any key: no token is set") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.server.url}/v1", api_key=key, max_retries=0)


def decoded(value: object) -> npt.NDArray[np.float32]:
    """A base64 embedding as OpenAI's clients decode it: little-endian float32."""
    return np.frombuffer(base64.b64decode(cast(str, value)), dtype="<f4")


def close(got: npt.NDArray[np.float32], expected: npt.NDArray[np.float32]) -> None:
    """The same vectors: equal to within 1e-6 (what /embed's seven decimals keep)."""
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= 1e-6


def message(exc: openai.APIError) -> str:
    """The error's own message (the client's ``message`` adds "Error code: ..." first)."""
    assert isinstance(exc.body, dict)
    return str(exc.body["message"])


def test_float_and_base64_are_the_embedders_document_vectors(api: Api, embedder: Embedder) -> None:
    expected = embedder.embed(TEXTS)
    tokens = sum(embedder.count_tokens(TEXTS))
    with client(api) as oa:
        floats = oa.embeddings.create(input=TEXTS, model=MODEL, encoding_format="float")
        raw = oa.embeddings.create(input=TEXTS, model=MODEL, encoding_format="base64")
        # Without encoding_format the client asks for base64 and decodes it itself.
        default = oa.embeddings.create(input=TEXTS, model=MODEL)
    for answer in (floats, raw, default):
        assert answer.object == "list" and answer.model == MODEL
        assert [d.index for d in answer.data] == [0, 1, 2]
        assert {d.object for d in answer.data} == {"embedding"}
        assert answer.usage.prompt_tokens == answer.usage.total_tokens == tokens
    as_floats = np.array([d.embedding for d in floats.data], dtype=np.float32)
    as_base64 = np.stack([decoded(d.embedding) for d in raw.data])
    assert as_base64.shape == (3, embedder.dim)
    close(as_base64, expected)
    close(np.array([d.embedding for d in default.data], dtype=np.float32), expected)
    close(as_floats, expected)
    close(as_floats, as_base64)


def test_one_string_and_no_model_embed_with_the_active_model(api: Api, embedder: Embedder) -> None:
    text = "a single string " * 200  # past the model's 256 tokens: truncated
    answer = api.client.post("/v1/embeddings", json={"input": text, "user": "ignored"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == MODEL and len(body["data"]) == 1
    assert body["usage"]["prompt_tokens"] == embedder.count_tokens([text])[0] == 256
    vector = np.array([body["data"][0]["embedding"]], dtype=np.float32)
    close(vector, embedder.embed([text]))
    same = {"input": "x", "dimensions": embedder.dim}
    assert api.client.post("/v1/embeddings", json=same).status_code == 200


def test_the_models_are_the_registry(api: Api, settings: Settings) -> None:
    with client(api) as oa:
        listed = oa.models.list()
    with Store(settings.database_url or "", settings.schema) as store:
        registered = store.models()
    assert [(m.id, m.object, m.owned_by) for m in listed.data] == [
        (r.name, "model", "indexer") for r in registered
    ]
    assert [m.created for m in listed.data] == [int(r.created_at.timestamp()) for r in registered]
    assert listed.data[0].id == MODEL


def test_a_named_model_that_is_not_active(api: Api, settings: Settings, model_cache: Path) -> None:
    """A tiny model with a query prefix: its document vectors, not its query vectors."""
    second = Embedder(record=describe_folder(FIXTURES / "bert-cls"), cache_dir=model_cache)
    with Store(settings.database_url or "", settings.schema) as store:
        store.add_model(
            "tiny-cls",
            dimension=second.dim,
            record=second.record.as_dict(),
            fingerprint=second.record.fingerprint,
        )
    with client(api) as oa:
        assert [m.id for m in oa.models.list().data] == [MODEL, "tiny-cls"]
        answer = oa.embeddings.create(input=TEXTS[:2], model="tiny-cls")
        with pytest.raises(openai.BadRequestError) as wrong:
            oa.embeddings.create(input="x", model="tiny-cls", dimensions=384)
    assert answer.model == "tiny-cls"
    vectors = np.array([d.embedding for d in answer.data], dtype=np.float32)
    close(vectors, second.embed(TEXTS[:2]))
    assert not np.allclose(vectors, second.embed_queries(TEXTS[:2]), atol=1e-3)
    assert answer.usage.prompt_tokens == sum(second.count_tokens(TEXTS[:2]))
    assert wrong.value.param == "dimensions"
    assert f"{second.dim}-dimensional" in wrong.value.message


def test_an_unknown_model_names_the_registered_ones(api: Api) -> None:
    with client(api) as oa, pytest.raises(openai.NotFoundError) as missing:
        oa.embeddings.create(input="x", model="text-embedding-3-small")
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    assert MODEL in missing.value.message and "text-embedding-3-small" in missing.value.message


@pytest.mark.parametrize(
    "given", [[1, 2, 3], [[101, 2003, 102], [101, 102]], [[7] * 3000, [8] * 3000]]
)
def test_token_ids_are_refused_with_the_langchain_hint(api: Api, given: object) -> None:
    """The last one holds more JSON values than a body may: refused before parsing,
    with the same hint."""
    with client(api) as oa, pytest.raises(openai.BadRequestError) as refused:
        oa.embeddings.create(input=given, model=MODEL)  # type: ignore[arg-type]
    assert refused.value.status_code == 400 and refused.value.param == "input"
    assert message(refused.value) == TOKEN_IDS
    assert "check_embedding_ctx_length=False" in TOKEN_IDS and "text only" in TOKEN_IDS


def test_as_many_inputs_as_openai_takes_and_no_more(api: Api, embedder: Embedder) -> None:
    texts = [f"note {i} about the {['sea', 'hills', 'city'][i % 3]}" for i in range(MAX_INPUTS)]
    with client(api) as oa:
        answer = oa.embeddings.create(input=texts, model=MODEL)
        with pytest.raises(openai.BadRequestError) as refused:
            oa.embeddings.create(input=[*texts, "one more"], model=MODEL)
    assert [d.index for d in answer.data] == list(range(MAX_INPUTS))
    picked = [0, 1, 1000, MAX_INPUTS - 1]
    got = np.array([answer.data[i].embedding for i in picked], dtype=np.float32)
    # Other neighbours in a model call than alone: the last bits may differ.
    close(got, embedder.embed([texts[i] for i in picked]))
    assert answer.usage.prompt_tokens == sum(embedder.count_tokens(texts))
    assert message(refused.value) == f"input holds {MAX_INPUTS + 1} texts; at most {MAX_INPUTS}"


def test_a_token_is_required_when_one_is_set(
    settings: Settings, database: str, embedder: Embedder
) -> None:
    guarded = dataclasses.replace(settings, http_token="s3cret")
    with serve(guarded, database, embedder) as api:
        with client(api, "wrong") as oa, pytest.raises(openai.AuthenticationError) as refused:
            oa.embeddings.create(input="x", model=MODEL)
        assert refused.value.code == "invalid_api_key"
        with client(api, "s3cret") as oa:
            assert len(oa.embeddings.create(input="x", model=MODEL).data) == 1
            assert oa.models.list().data
        bare = api.client.get("/v1/models")
    assert bare.status_code == 401 and bare.headers["www-authenticate"].startswith("Bearer")
    assert bare.json() == {
        "error": {
            "message": "this API needs a token: send the header Authorization: Bearer <token>",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


def _error(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and "\n" not in error["message"]
    assert int(response.headers["content-length"]) == len(response.content)
    return error


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        ({"input": ""}, 400, "input", "input is an empty string"),
        ({"input": []}, 400, "input", "input is empty: give a text or a list of texts"),
        ({"input": ["a", ""]}, 400, "input", "input[1] is an empty string"),
        ({"input": "a", "dimensions": 3}, 400, "dimensions", "dimensions must be 384"),
        ({"input": "a", "encoding_format": "int8"}, 400, None, "encoding_format"),
        ({"input": "a", "temperature": 1}, 400, None, "temperature"),
        ({"input": "a", "model": "nope"}, 404, "model", "registered: all-MiniLM-L6-v2"),
        ({"input": "x" * 100_001}, 413, None, "at most 100000"),
    ],
)
def test_errors_are_in_openais_shape(
    api: Api, body: dict[str, object], status: int, param: str | None, message: str
) -> None:
    response = api.client.post("/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    error = _error(response)
    assert error["param"] == param and message in str(error["message"])
    assert error["type"] == "invalid_request_error"


def test_refusals_before_any_route_are_in_openais_shape_under_v1_only(api: Api) -> None:
    not_json = api.client.post("/v1/embeddings", content=b'{"input": "a"')
    assert not_json.status_code == 400  # no Content-Type: the shared check says so
    assert "Content-Type: application/json" in str(_error(not_json)["message"])
    broken = api.client.post(
        "/v1/embeddings", content=b'{"input": "a"', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400 and "not valid JSON" in str(_error(broken)["message"])
    unknown = api.client.get("/v1/engines")
    assert unknown.status_code == 404 and _error(unknown)["message"] == "Not Found"
    # The rest of the API keeps its own shape.
    assert "give either" in api.client.post("/embed", json={}).json()["error"]
    assert api.client.get("/nowhere").json() == {"error": "Not Found"}


def test_openapi_documents_the_v1_routes(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    assert "post" in schema["paths"]["/v1/embeddings"]
    assert "get" in schema["paths"]["/v1/models"]
    request = schema["components"]["schemas"]["EmbeddingsRequest"]["properties"]
    assert request["input"]["maxItems"] == MAX_INPUTS
    assert json.dumps(schema["components"]["schemas"]["OpenAIErrorBody"])
