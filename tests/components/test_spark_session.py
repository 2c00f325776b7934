"""The local Spark session leaves nothing running: ``SparkSession.stop()`` alone keeps pyspark's JVM alive
until the Python process ends (in a test worker, for the rest of the run), so ``local_session`` ends it,
and the next session starts a new one."""

from __future__ import annotations

from pyspark import SparkContext

from pillars.components.data.spark import local_session


def test_a_local_session_ends_its_jvm_and_the_next_session_starts_another():
    with local_session("local[1]") as session:
        jvm = SparkContext._gateway.proc
        assert session.range(5).count() == 5 and jvm.poll() is None
    assert jvm.poll() is not None, "the session's JVM is still running"
    assert SparkContext._gateway is None
    with local_session("local[1]") as session:
        second = SparkContext._gateway.proc
        assert session.range(3).count() == 3 and second.pid != jvm.pid
    assert second.poll() is not None
