"""``mqttlb bench scale``, its pure parts: the raw publisher's packets, the devices drawn, parsing, the tables."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mqttlb.commands.bench_publisher import connect_packet, packet_ids, publish_packet, remaining_length
from mqttlb.commands.bench_scale import Cell, burst, device_draw, heartbeats, processes_table, sizes, stamps, table
from mqttlb.commands.bench_scale import router_config as scale_router_config
from mqttlb.commands.cli import _parser
from mqttlb.core.config import parse


@pytest.mark.parametrize(("n", "encoded"), [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"),
                                            (16_384, b"\x80\x80\x01"), (268_435_455, b"\xff\xff\xff\x7f")])
def test_remaining_length_is_mqtts_variable_integer(n: int, encoded: bytes) -> None:
    assert remaining_length(n) == encoded


def test_connect_is_mqtt_311_clean_session_without_keepalive() -> None:
    assert connect_packet("p") == b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x00\x00\x01p"


def test_publish_packets_byte_for_byte() -> None:
    assert publish_packet("a/b", b"x", 0) == b"\x30\x06\x00\x03a/bx"
    assert publish_packet("a/b", b"x", 1, packet_id=258) == b"\x32\x08\x00\x03a/b\x01\x02x"
    assert publish_packet("a/b", b"", 1, packet_id=1, retain=True) == b"\x33\x07\x00\x03a/b\x00\x01"
    long = publish_packet("t", b"y" * 200, 0)
    assert long[:3] == b"\x30\xcb\x01" and len(long) == 3 + 203


def test_packet_ids_wrap_past_65535_and_are_never_zero() -> None:
    ids = list(itertools.islice(packet_ids(), 65_537))
    assert ids[0] == 1 and ids[65_534] == 65_535 and ids[65_535] == 1 and 0 not in ids


def test_devices_drawn_over_all_ids_the_same_every_run() -> None:
    few = device_draw(100, 10_000)
    assert set(few) == set(range(100))
    many = device_draw(1_000_000, 100_000)
    assert many == device_draw(1_000_000, 100_000)
    assert all(0 <= d < 1_000_000 for d in many)
    assert len(set(many)) > 90_000  # nearly every pick a device the router's cache has not seen
    assert max(many) > 900_000


def test_burst_topics_carry_the_device_and_qos_1_has_packet_ids() -> None:
    devices = device_draw(1000, 3)
    packets = burst(1000, 3, qos=1)
    for n, (device, packet) in enumerate(zip(devices, packets, strict=True)):
        topic = f"bench/d{device}/in".encode()
        assert packet[0] == 0x32
        assert packet[4:4 + len(topic)] == topic
        assert packet[4 + len(topic):6 + len(topic)] == (n + 1).to_bytes(2, "big")
    assert all(p[0] == 0x30 for p in burst(1000, 3, qos=0))


def test_heartbeats_are_retained_qos_1_one_per_worker() -> None:
    beats = heartbeats(3)
    assert [b[0] for b in beats] == [0x33] * 3
    assert b"mqttlb/workers/w2/heartbeat" in beats[2]
    assert beats[2].endswith(b'{"worker":"w2","state":"up","weight":1}')


def test_stamps_counts_whole_lines_and_leaves_a_cut_one_for_later() -> None:
    assert stamps(b"") == (0, 0, None)
    assert stamps(b"1700000000.5") == (0, 0, None)
    assert stamps(b"1700000000.25\n1700000000.75\n1700000001.0") == (28, 2, 1700000000.75)
    assert stamps(b"1700000002.5\n") == (13, 1, 1700000002.5)


def test_sizes_read_k_and_m() -> None:
    assert sizes("3,100,10000") == [3, 100, 10_000]
    assert sizes("100k, 1M,10_000") == [100_000, 1_000_000, 10_000]
    with pytest.raises(ValueError):
        sizes("0")
    with pytest.raises(ValueError):
        sizes("many")


def cell(workers: int, devices: int, qos: int, rate: float, delivered: int = 1000, processes: int = 1,
         round_: int = 0, cpu: float = 12.34) -> Cell:
    return Cell(workers, devices, qos, processes, 1000, delivered, rate, cpu, 5.0, 0.875, round_)


def test_table_puts_each_rate_beside_its_multiple_of_3_workers_100_devices() -> None:
    out = table([cell(3, 100, 0, 40_000), cell(3, 100, 1, 20_000), cell(10_000, 1_000_000, 0, 10_000, delivered=990),
                 cell(10_000, 1_000_000, 1, 25_000)])
    lines = out.splitlines()
    assert lines[0].startswith("| workers × devices | QoS 0 msg/s (× 3×100) | QoS 1 msg/s (× 3×100) |")
    assert lines[2] == "| 3 × 100 | 40,000 (1.00×) | 20,000 (1.00×) | 12.3 | 12.3 |"
    assert lines[3] == "| 10,000 × 1M | 10,000 (0.25×), 10 lost | 25,000 (1.25×) | 12.3 | 12.3 |"


def test_table_without_the_baseline_or_a_qos() -> None:
    out = table([cell(100, 100_000, 1, 5000)])
    assert out.splitlines()[2] == "| 100 × 100k | - | 5,000 | - | 12.3 |"


def test_table_over_rounds_gives_medians_and_each_multiple_against_its_own_rounds_baseline() -> None:
    rounds = [(40_000, 30_000, 10.0), (20_000, 16_000, 30.0), (40_000, 36_000, 20.0)]  # round 2: a slow machine
    cells = [c for r, (base, big, cpu) in enumerate(rounds)
             for c in (cell(3, 100, 0, base, round_=r, cpu=cpu), cell(1000, 1_000_000, 0, big, round_=r, cpu=cpu))]
    lines = table(cells).splitlines()
    assert lines[2] == "| 3 × 100 | 40,000 (1.00×, 1.00–1.00) | - | 20.0 | - |"
    # the multiples are 0.75, 0.80, 0.90: their median, not 30,000 / 40,000 from the medians of the rates
    assert lines[3] == "| 1,000 × 1M | 30,000 (0.80×, 0.75–0.90) | - | 20.0 | - |"


def test_table_over_rounds_sums_what_each_lost() -> None:
    cells = [cell(3, 100, 1, 100, delivered=990, round_=0), cell(3, 100, 1, 100, delivered=995, round_=1)]
    assert table(cells).splitlines()[2] == "| 3 × 100 | - | 100 (1.00×, 1.00–1.00), 15 lost | - | 12.3 |"


def test_processes_table_gives_the_ratio_to_one_process() -> None:
    out = processes_table([cell(3, 100, 0, 40_000), cell(3, 100, 0, 30_000, processes=2)])
    assert "| `mqttlb run` | 0 | 40,000 | 1.00 | 12.3 | 5.0 | 88% |" in out
    assert "| `mqttlb run --processes 2` | 0 | 30,000 | 0.75 | 12.3 | 5.0 | 88% |" in out


def test_processes_table_over_rounds_takes_each_rounds_one_process() -> None:
    out = processes_table([cell(3, 100, 1, 20_000, round_=0), cell(3, 100, 1, 18_000, processes=2, round_=0),
                           cell(3, 100, 1, 10_000, round_=1), cell(3, 100, 1, 11_000, processes=2, round_=1)])
    assert "| `mqttlb run` | 1 | 15,000 | 1.00, 1.00–1.00 | 12.3 | 5.0 | 88% |" in out
    assert "| `mqttlb run --processes 2` | 1 | 14,500 | 1.00, 0.90–1.10 | 12.3 | 5.0 | 88% |" in out


def test_cli_bench_scale_options() -> None:
    args = _parser().parse_args(["bench", "scale", "--workers", "3,1000", "--devices", "100,1M", "--qos", "1",
                                 "--messages", "5000", "--processes", "0", "--primed", "--repeat", "3", "--json"])
    assert (args.measure, args.workers, args.devices, args.qos, args.messages, args.processes, args.primed,
            args.repeat, args.json) == ("scale", "3,1000", "100,1M", "1", 5000, 0, True, 3, True)
    defaults = _parser().parse_args(["bench", "scale"])
    assert (sizes(defaults.workers), sizes(defaults.devices), defaults.qos, defaults.messages, defaults.processes,
            defaults.primed, defaults.repeat) == ([3, 100, 1000, 10_000], [100, 100_000, 1_000_000], "0,1", 100_000, 2,
                                                  False, 1)
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["bench", "scale", "--repeat", bad])


@pytest.mark.parametrize(("share_group", "devices"), [(False, None), (True, 1_000_000)])
def test_the_routers_config_is_one_the_router_takes(share_group: bool, devices: int | None) -> None:
    broker: Any = SimpleNamespace(host="127.0.0.1", port=18830)
    config = parse(scale_router_config(broker, "bench-scale-3", 3, 1, share_group, devices), base_dir=Path("."),
                   environ={})
    assert config.broker.session_expiry == 0  # a round's router leaves no session to the next
    assert config.balancers["consistent_hash"]["cache_size"] >= (devices or 0)
