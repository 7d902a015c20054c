from tests.support import Collector, publish_all


def test_real_mosquitto_round_trip(broker) -> None:  # type: ignore[no-untyped-def]
    collector = Collector(broker.port, "saltmarsh/v1/#")
    publish_all(broker.port, [("saltmarsh/v1/s/d/reading", str(i).encode()) for i in range(50)])
    assert collector.wait_for(lambda msgs: len(msgs) == 50, 10)
    assert [m.payload for m in collector.messages] == [str(i).encode() for i in range(50)]
    collector.close()
