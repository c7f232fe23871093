"""Reaching a customer: which channel (`ChannelModel`) and when (`SendTimeModel`, its EM loops in
`em_kernels`), from the messages sent and how customers responded."""

from models.engagement.channel import ChannelModel
from models.engagement.send_time import SendTimeModel, parse_quiet_hours

__all__ = ["ChannelModel", "SendTimeModel", "parse_quiet_hours"]
