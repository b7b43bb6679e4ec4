"""What counts as the same event (CONTRACT 4, events)."""

from pushline.identity import event_key

BASE = {"name": "operator.login", "datetime": {"created": "2014-01-01 00:00:00", "sent": "x"},
        "parameters": {"operator_id": 1, "b": [1, {"c": 2}]}}


def variant(**changes):
    body = {**BASE, "datetime": dict(BASE["datetime"]), "parameters": dict(BASE["parameters"])}
    for path, value in changes.items():
        target, _, field = path.rpartition("__")
        (body[target] if target else body)[field] = value
    return body


def test_sent_does_not_change_identity():
    assert event_key(variant(datetime__sent="2020-01-01 00:00:00")) == event_key(BASE)


def test_key_order_and_number_spelling_do_not_change_identity():
    reordered = {"parameters": {"b": [1.0, {"c": 2e0}], "operator_id": 1}, "datetime": BASE["datetime"],
                 "name": "operator.login"}
    assert event_key(reordered) == event_key(BASE)


def test_name_created_text_and_parameters_each_change_identity():
    keys = {
        event_key(BASE),
        event_key(variant(name="operator.logout")),
        event_key(variant(datetime__created="2014-01-01T00:00:00+00:00")),  # same instant, other text
        event_key(variant(parameters__operator_id=2)),
        event_key(variant(parameters__operator_id="1")),
    }
    assert len(keys) == 5
