"""The local Spark session leaves nothing running and fails in one line: ``SparkSession.stop()`` alone keeps
pyspark's JVM alive until the Python process ends (in a test worker, for the rest of the run), so
``local_session`` ends it and the next session starts a new one; a failure inside the JVM becomes one line
naming the Java exception, read while the JVM still runs (a ``Py4JJavaError``'s text needs it)."""

from __future__ import annotations

import pytest
from pyspark import SparkContext

from pillars.components.data.spark import local_session
from pillars.components.errors import ConfigError, DataError


def test_a_session_ends_its_jvm_and_the_next_one_starts_another_and_fails_in_one_line():
    with local_session("local[1]", memory="512m") as session:
        jvm = SparkContext._gateway.proc
        assert session.range(5).count() == 5 and jvm.poll() is None
    assert jvm.poll() is not None, "the session's JVM is still running"
    assert SparkContext._gateway is None
    with pytest.raises(DataError, match=r'^the Spark job failed: java.lang.NumberFormatException: For input '
                                        r'string: "x"$'):
        with local_session("local[1]", memory="512m") as session:
            second = SparkContext._gateway.proc
            assert session.range(3).count() == 3 and second.pid != jvm.pid
            SparkContext._jvm.java.lang.Integer.parseInt("x")
    assert second.poll() is not None


def test_a_heap_that_runs_out_names_the_parameter_that_sizes_it():
    with pytest.raises(ConfigError, match=r"^Spark ran out of memory \(java.lang.OutOfMemoryError: .*\): raise "
                                          r"--param spark_driver_memory"):
        with local_session("local[1]", memory="512m"):
            SparkContext._jvm.java.lang.reflect.Array.newInstance(SparkContext._jvm.java.lang.Long.TYPE, 2**30)
    assert SparkContext._gateway is None
