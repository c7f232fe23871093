"""Reaching a customer: which channel (`ChannelModel`) and when (`SendTimeModel`, its EM in
`send_time_em` with loops in `em_kernels`), from the messages sent and how customers responded."""

from models._faces import lazy_face

__all__, __getattr__, __dir__ = lazy_face(
    __name__,
    {"ChannelModel": "channel", "SendTimeModel": "send_time", "parse_quiet_hours": "local_time"},
)
