"""The merge request contract: defaults, shortcuts and errors that name the field."""

import math

import pytest
from pydantic import ValidationError

from app.cli import describe_validation_error
from app.schemas import MergeRequest

BASE = {"models": ["s3://ckpt/a/", "s3://ckpt/b/"], "method": "isotropic", "output_uri": "/tmp/o"}


def problem(**changes) -> str:
    with pytest.raises(ValidationError) as error:
        MergeRequest.model_validate(BASE | changes)
    return describe_validation_error(error.value)


def test_bare_strings_are_uris_and_lambdas_default_to_equal():
    request = MergeRequest.model_validate(BASE)
    assert [model.uri for model in request.models] == ["s3://ckpt/a/", "s3://ckpt/b/"]
    assert request.weights == [1.0, 1.0]
    assert request.target == 0 and request.dtype == "auto" and request.fisher_floor == 1e-6


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lambdas": [1.0]}, "lambdas has 1 values but models has 2"),
        ({"lambdas": [1.0, -0.5]}, "lambdas: lambdas[1] = -0.5 must be finite and >= 0"),
        ({"lambdas": [1.0, math.nan]}, "lambdas[1] = nan must be finite"),
        ({"lambdas": [1.0, math.inf]}, "lambdas[1] = inf must be finite"),
        ({"lambdas": [0.0, 0.0]}, "lambdas: lambdas must have a positive sum"),
        ({"method": "ties"}, "method: unknown method 'ties'"),
        ({"models": ["s3://ckpt/a/"]}, "models: List should have at least 2 items"),
        ({"models": ["s3://a/", "gs://b/"]}, "models.1.uri: unsupported URI scheme 'gs'"),
        ({"output_uri": "ftp://x/y"}, "output_uri: unsupported URI scheme 'ftp'"),
        ({"target": 2}, "target 2 is not an index into the 2 models"),
        ({"method": "fisher"}, "needs a fisher for every model; models [0, 1] have none"),
        ({"fisher_floor": 0}, "fisher_floor: Input should be greater than 0"),
        ({"dtype": "int8"}, "dtype: Input should be"),
        ({"max_shard_size": "lots"}, "max_shard_size: 'lots' is not a size"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_invalid_requests_name_the_field(changes, message):
    assert message in problem(**changes)


def test_sizes_accept_units():
    assert MergeRequest.model_validate(BASE | {"max_shard_size": "2GB"}).max_shard_size == 2 * 10**9
    assert MergeRequest.model_validate(BASE | {"max_shard_size": "5MiB"}).max_shard_size == 5 << 20
    assert MergeRequest.model_validate(BASE | {"max_shard_size": 1000}).max_shard_size == 1000


def test_fisher_method_with_every_fisher_given():
    request = MergeRequest.model_validate(
        BASE
        | {
            "method": "fisher",
            "models": [{"uri": "s3://c/a", "fisher": "s3://c/fa"}, {"uri": "/b", "fisher": "/fb"}],
            "lambdas": [0.7, 0.3],
        }
    )
    assert [model.fisher for model in request.models] == ["s3://c/fa", "/fb"]
