"""Reaching a customer: which channel (`ChannelModel`) and when (`SendTimeModel`, its EM in
`send_time_em` with loops in `em_kernels`), from the messages sent and how customers responded."""

from models.engagement.channel import ChannelModel
from models.engagement.local_time import parse_quiet_hours
from models.engagement.send_time import SendTimeModel

__all__ = ["ChannelModel", "SendTimeModel", "parse_quiet_hours"]
