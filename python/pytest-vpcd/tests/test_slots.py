"""pytest-vpcd's own tests, against the real thing: each worker's private pcscd with
the vpcd-rs driver, the built-in card, vsmartcard's Python vicc, pyscard and
opensc-tool. Run them in parallel: ``pytest -n 4``."""

import os
import subprocess
import threading

import pytest

DF = [0x00, 0xA4, 0x04, 0x0C, 0x06, 0xF0, 0x76, 0x70, 0x63, 0x64, 0x01]
EF = [0x00, 0xA4, 0x02, 0x0C, 0x02, 0x50, 0x01]
READ = [0x00, 0xB0, 0x00, 0x00, 0x00]


def record(slot):
    """Notes which process and which pcscd ran the test, for the caller to check
    that xdist's workers each had their own."""
    where = os.environ.get("VPCD_PYTEST_RECORD")
    if where:
        with open(os.path.join(where, f"{os.getpid()}-{slot.index}"), "a") as f:
            f.write(f"{os.getpid()} {slot.environment.socket} {slot.reader}\n")


@pytest.mark.parametrize("n", range(16))
def test_a_card_each(vpcd_card, n):
    """Sixteen tests, each with its own built-in card doing real work."""
    record(vpcd_card)
    assert vpcd_card.transmit(DF)[1:] == (0x90, 0x00)
    assert vpcd_card.transmit(EF)[1:] == (0x90, 0x00)
    data, sw1, sw2 = vpcd_card.transmit(READ)
    assert bytes(data) == b"Hello from vpcd-vicc" and (sw1, sw2) == (0x90, 0x00)
    assert vpcd_card.transmit([0x00, 0x20, 0x00, 0x81, 0x06] + list(b"123456")) == ([], 0x90, 0x00)
    payload = [(i * 7 + n) & 0xFF for i in range(200)]
    assert vpcd_card.transmit([0x80, 0xEE, 0x00, 0x00, len(payload)] + payload + [0x00]) == (
        payload, 0x90, 0x00)
    data, sw1, sw2 = vpcd_card.transmit([0x00, 0x84, 0x00, 0x00, 0x08])
    assert len(data) == 8 and (sw1, sw2) == (0x90, 0x00)


def test_sixteen_cards_at_once(vpcd_lease):
    """Sixteen slots of one worker, each with its own card, worked at the same time
    from sixteen threads: each holds its card while all the others hold theirs."""
    slots = [vpcd_lease() for _ in range(16)]
    assert len({s.reader for s in slots}) == 16
    together = threading.Barrier(16, timeout=60)
    errors = []

    def work(slot, n):
        try:
            slot.insert_builtin()
            together.wait()
            conn = slot.connect()
            payload = [(n + i) & 0xFF for i in range(100)]
            assert conn.transmit([0x80, 0xEE, 0x00, 0x00, 100] + payload + [0]) == (
                payload, 0x90, 0x00)
            assert conn.transmit(DF)[1:] == (0x90, 0x00)
            together.wait()
        except Exception as e:  # reported below, with the others released
            errors.append((slot.reader, e))
            together.abort()

    threads = [threading.Thread(target=work, args=(s, n)) for n, s in enumerate(slots)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_removal_and_insertion(vpcd_card):
    record(vpcd_card)
    conn = vpcd_card.connect()
    vpcd_card.remove_card()
    with pytest.raises(Exception):
        conn.transmit([0x00, 0x84, 0x00, 0x00, 0x08])
    vpcd_card.insert_card()
    conn = vpcd_card.connect()
    data, sw1, sw2 = conn.transmit([0x00, 0x84, 0x00, 0x00, 0x08])
    assert (len(data), sw1, sw2) == (8, 0x90, 0x00)


def test_two_slots_in_one_test(vpcd_lease):
    a, b = vpcd_lease(), vpcd_lease()
    assert a.reader != b.reader and a.port != b.port
    a.insert_builtin("--atr", "3B 80 80 01 01")
    b.insert_builtin()
    assert a.connect().getATR() == [0x3B, 0x80, 0x80, 0x01, 0x01]
    assert b.connect().getATR()[:2] == [0x3B, 0x8A]


def test_the_python_vicc(vpcd_slot):
    """vsmartcard's own vicc, connecting to the slot's address."""
    record(vpcd_slot)
    vpcd_slot.python_vicc("iso7816")
    assert vpcd_slot.connect().getATR() == [0x3B, 0x95, 0x13, 0x81, 0x01, 0x80, 0x73, 0xFF,
                                             0x01, 0x00, 0x0B]
    assert vpcd_slot.transmit([0x00, 0xA4, 0x00, 0x0C, 0x02, 0x3F, 0x00]) == ([], 0x90, 0x00)
    data, sw1, sw2 = vpcd_slot.transmit([0x00, 0x84, 0x00, 0x00, 0x08])
    assert (len(data), sw1, sw2) == (8, 0x90, 0x00)


def test_a_child_process_reaches_the_same_pcscd(vpcd_card):
    out = subprocess.run(
        ["opensc-tool", "-r", vpcd_card.reader, "-s", "80 EE 00 00 02 AB CD"],
        env={**os.environ, **vpcd_card.env}, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SW1=0x90, SW2=0x00" in out.stdout and "AB CD" in out.stdout


def test_a_vicc_that_fails_says_why(vpcd_slot):
    from pytest_vpcd import VpcdError

    with pytest.raises(VpcdError, match="no such card"):
        vpcd_slot.spawn_vicc(["/bin/sh", "-c", "echo no such card >&2; exit 3"])
    vpcd_slot.insert_builtin()
