"""Routing keys: where a route finds the device id, and refusing every unusable one."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttlb.core.keys import KeySpec
from mqttlb.core.topics import key_problem
from mqttlb.errors import BadKey, RemoteInputError

properties = settings(derandomize=True, max_examples=150, deadline=None)


# -- parse ---------------------------------------------------------------------


def test_parse_capture() -> None:
    spec = KeySpec.parse("device", ("device", "kind"))
    assert spec == KeySpec(capture="device")
    assert not spec.needs_payload
    assert str(spec) == "device"


def test_parse_payload_path() -> None:
    spec = KeySpec.parse("payload.a.b", ())
    assert spec == KeySpec(capture=None, path=("a", "b"))
    assert spec.needs_payload
    assert str(spec) == "payload.a.b"


def test_payload_prefix_wins_over_a_capture_name() -> None:
    assert KeySpec.parse("payload.id", ("payload",)).path == ("id",)


@pytest.mark.parametrize(("text", "captures"), [
    ("nope", ("device",)),
    ("nope", ()),
    ("Device", ("device",)),
    ("", ("device",)),
    ("payload.", ()),
    ("payload.a..b", ()),
    ("payload.a.", ()),
    ("payload..a", ()),
    ("payload", ()),
])
def test_parse_refuses(text: str, captures: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        KeySpec.parse(text, captures)


def test_parse_message_names_the_captures() -> None:
    with pytest.raises(ValueError, match="captures: device, kind"):
        KeySpec.parse("nope", ("device", "kind"))
    with pytest.raises(ValueError, match="captures: none"):
        KeySpec.parse("nope", ())


# -- extract from captures -------------------------------------------------------------


def test_extract_from_capture_ignores_the_payload() -> None:
    spec = KeySpec.parse("device", ("device",))
    assert spec.extract({"device": "d42"}, b"\xff not json") == "d42"


@pytest.mark.parametrize("value", ["", "a\x01", "\x7f", "a\u0085", "\ud800", "\ufdd0", "\U0001fffe", "x" * 257])
def test_extract_from_capture_checks_the_key(value: str) -> None:
    with pytest.raises(BadKey):
        KeySpec.parse("device", ("device",)).extract({"device": value}, b"")


# -- extract from payloads -------------------------------------------------------------

ID = KeySpec.parse("payload.id", ())
NESTED = KeySpec.parse("payload.meta.device.id", ())


@pytest.mark.parametrize(("payload", "key"), [
    (b'{"id": "d42"}', "d42"),
    (b'{"id": "d\\u00e9"}', "dé"),
    ('{"id": "dé"}'.encode(), "dé"),
    (b'{"id": 42}', "42"),
    (b'{"id": -7}', "-7"),
    (b'{"id": 1.5}', "1.5"),
    (b'{"id": 0}', "0"),
    (b'{"other": 1, "id": "x"}', "x"),
    (b'  {"id": "x"}  ', "x"),
])
def test_extract_from_payload(payload: bytes, key: str) -> None:
    assert ID.extract({}, payload) == key


def test_extract_nested_path() -> None:
    assert NESTED.extract({}, b'{"meta": {"device": {"id": "d7"}}, "id": "top"}') == "d7"


@pytest.mark.parametrize("payload", [
    b'{"meta": {"device": "d7"}}',          # a string where an object should be
    b'{"meta": {"device": []}}',
    b'{"meta": {"device": {}}}',            # absent at the last step
    b'{"meta": null}',
    b'{"meta": [{"device": {"id": "x"}}]}',  # lists are not walked
])
def test_extract_nested_path_refuses(payload: bytes) -> None:
    with pytest.raises(BadKey):
        NESTED.extract({}, payload)


@pytest.mark.parametrize(("payload", "why"), [
    (b'{"id": true}', "bool"),
    (b'{"id": false}', "bool"),
    (b'{"id": null}', "NoneType"),
    (b'{"id": [1]}', "list"),
    (b'{"id": {"a": 1}}', "dict"),
    (b'{"other": "x"}', "absent"),
    (b'{}', "absent"),
    (b'["id"]', "no object"),
    (b'"d42"', "no object"),
    (b'42', "no object"),
    (b'null', "no object"),
    (b"not json", "not JSON"),
    (b"", "not JSON"),
    (b'{"id": "x"', "not JSON"),
    (b'{"id": "x"} trailing', "not JSON"),
    (b'{"id": NaN}', "not JSON"),
    (b'{"id": "\xff"}', "not JSON"),             # invalid UTF-8
    (b'{"id": "\xed\xa0\x80"}', "not JSON"),     # a UTF-8-encoded surrogate is invalid UTF-8
    (b'{"id": "a/b"}', "forbidden character U\\+002F"),
    (b'{"id": "a+b"}', "forbidden"),
    (b'{"id": "#"}', "forbidden"),
    (b'{"id": "d\\u0001"}', "forbidden character U\\+0001"),
    (b'{"id": "d\\u0000"}', "forbidden character U\\+0000"),
    (b'{"id": "d\\u009f"}', "forbidden"),
    (b'{"id": "\\ud800"}', None),  # a lone surrogate escape: refused whichever way
    (b'{"id": "\\ufdd0"}', "forbidden"),
    (b'{"id": ""}', "empty"),
    (b'{"id": 1e+300}', "forbidden character U\\+002B"),  # as the string "1e+300": no + in a topic level
    (b'{"id": 1' + b"0" * 400 + b"}", "longer than 256 bytes"),  # its digits, too many for a key
    (b'{"id": 1e400', "not JSON"),  # past a double's range, and broken besides
    (b'{"id": 1e400, }', "not JSON"),
])
def test_extract_from_payload_refuses(payload: bytes, why: str | None) -> None:
    with pytest.raises(BadKey, match=why):
        ID.extract({}, payload)


def test_extract_long_payload_key_refused() -> None:
    with pytest.raises(BadKey, match="longer"):
        ID.extract({}, b'{"id": "' + b"x" * 257 + b'"}')
    assert ID.extract({}, b'{"id": "' + b"x" * 256 + b'"}') == "x" * 256


@pytest.mark.parametrize("payload", [
    b"[" * 100_000,
    b'{"a":' * 100_000,
    b'{"id":' * 100_000,
    b'{"id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
])
def test_deep_nesting_is_a_bad_key_not_a_crash(payload: bytes) -> None:
    with pytest.raises(BadKey):
        ID.extract({}, payload)
    with pytest.raises(BadKey):
        NESTED.extract({}, payload)


def test_bad_key_is_a_remote_input_error() -> None:
    assert issubclass(BadKey, RemoteInputError)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["id", "a", "b"]), inner, max_size=3),
    max_leaves=8,
)


@properties
@given(json_values)
def test_any_json_gives_a_usable_key_or_bad_key(value: object) -> None:
    payload = orjson.dumps({"id": value})
    try:
        key = ID.extract({}, payload)
    except BadKey:
        return
    assert key_problem(key) is None
    assert isinstance(value, (str, int, float)) and not isinstance(value, bool)
    assert key == (value if isinstance(value, str) else orjson.dumps(value).decode())  # a number: as written


# -- numbers: the key is the number's text ----------------------------------------------


@pytest.mark.parametrize(("number", "key"), [
    (b"18446744073709551615", "18446744073709551615"),  # 2**64 - 1: the last that orjson gives as an int
    (b"18446744073709551616", "18446744073709551616"),  # 2**64: a float to orjson
    (b"89882600000012345678", "89882600000012345678"),  # a 20-digit ICCID
    (b"-9223372036854775809", "-9223372036854775809"),  # one under the smallest int64
    (b"-12", "-12"),
    (b"123456789012345678901234567890123456789", "123456789012345678901234567890123456789"),
    (b"1.50", "1.50"),
    (b"1e3", "1e3"),
    (b"1E3", "1E3"),
    (b"1e-3", "1e-3"),
    (b"1e300", "1e300"),
    (b"1e400", "1e400"),  # past a double's range, which orjson refuses: JSON all the same
    (b"-1e400", "-1e400"),
    (b"9" * 256, "9" * 256),  # an integer past a double's range, as long as a key may be
    (b"10.0", "10.0"),
    (b"-0", "-0"),
    (b"-0.0", "-0.0"),
])
def test_a_number_key_is_its_text_as_written(number: bytes, key: str) -> None:
    assert ID.extract({}, b'{"id": ' + number + b"}") == key
    assert ID.extract({}, b'{"id": "' + number + b'"}') == key  # the same as the digits in a string


@properties
@given(st.integers(-(10**255) + 1, 10**256 - 1) | st.integers())
def test_any_integer_key_is_its_decimal_digits(number: int) -> None:
    assert ID.extract({}, f'{{"id": {number}}}'.encode()) == str(number)


def test_the_number_is_found_among_strings_and_numbers_that_look_alike() -> None:
    payload = (b'{"note": "say \\"12345678901234567890\\", 1e5", "id": 5, '
               b'"meta": {"id": 1.0, "device": {"n": [2e22], "id": 98765432109876543210}}}')
    assert NESTED.extract({}, payload) == "98765432109876543210"
    assert KeySpec.parse("payload.meta.id", ()).extract({}, payload) == "1.0"


@pytest.mark.parametrize("reading", [b"1e400", b"-1e999", b"1" + b"0" * 400, b"[1e400, 2]", b'{"x": 1e400}'])
def test_a_number_past_a_doubles_range_elsewhere_costs_the_message_nothing(reading: bytes) -> None:
    """orjson refuses such a number, which JSON allows: one huge sensor reading made the message a bad key."""
    assert ID.extract({}, b'{"id": "dev1", "reading": ' + reading + b"}") == "dev1"
    assert NESTED.extract({}, b'{"reading": ' + reading + b', "meta": {"device": {"id": 12}}}') == "12"


def test_a_big_number_beside_the_deepest_nesting_orjson_takes() -> None:
    """orjson reads 1,024 levels; the second reading is orjson too, so it takes the same (stdlib json would not)."""
    deep = b"[" * 1023 + b"]" * 1023
    assert orjson.loads(deep) is not None
    assert ID.extract({}, b'{"deep": ' + deep + b', "id": 12345678901234567890123}') == "12345678901234567890123"


@properties
@given(st.binary(max_size=64))
def test_any_bytes_give_a_key_or_bad_key(payload: bytes) -> None:
    try:
        key = ID.extract({}, payload)
    except BadKey:
        return
    assert key_problem(key) is None
