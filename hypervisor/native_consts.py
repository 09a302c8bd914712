"""The names the C core defines, for every Python module, test and benchmark.

native/*.h are the one source of the protocol's numbers: message types,
page states, sizes, flags and the liveness timing defaults. The compiled
module carries their values (its cffi declarations are generated from the
headers, native/cdefgen.py), and this module gives them Python names.
Nothing here restates a number.
"""
from __future__ import annotations

import enum

from hypervisor._ivy_native import ffi, lib
from hypervisor.cenum import enum_members, lowercase


PAGE_SIZE = int(lib.IVY_PAGE_SIZE)
MAX_NODES = int(lib.IVY_MAX_NODES)
WIRE_MAGIC = int(lib.IVY_WIRE_MAGIC)
WIRE_PROTO = int(lib.IVY_WIRE_PROTO)
WIRE_HDR_SIZE = int(lib.IVY_WIRE_HDR_SIZE)
WIRE_MAX_FRAME = int(lib.IVY_WIRE_MAX_FRAME)
REPLY_DATA = int(lib.IVY_REPLY_DATA)
REPLY_OWNERSHIP = int(lib.IVY_REPLY_OWNERSHIP)
REPLY_MIGRATORY = int(lib.IVY_REPLY_MIGRATORY)
REPLY_WRITABLE = int(lib.IVY_REPLY_WRITABLE)
REQ_WRITE_SOON = int(lib.IVY_REQ_WRITE_SOON)
HEARTBEAT_MS = int(lib.IVY_RT_HEARTBEAT_MS)   # a link's PING period unless configured
TIMEOUT_MS = int(lib.IVY_RT_TIMEOUT_MS)       # a peer silent this long is lost unless configured
ERR_LEN = int(lib.IVY_RT_ERR_LEN)

# Engine messages, then the link-level ones that never reach the engine.
WireType = enum.IntEnum("WireType", {**enum_members(ffi, "enum ivy_msg_type", "IVY_MSG_"),
                                     **enum_members(ffi, "enum ivy_wire_type", "IVY_WIRE_")})
ENGINE_TYPES = tuple(WireType[name] for name in enum_members(ffi, "enum ivy_msg_type", "IVY_MSG_"))
WireStatus = enum.IntEnum("WireStatus", enum_members(ffi, "enum ivy_wire_status", "IVY_WIRE_"))
FailKind = enum.IntEnum("FailKind", enum_members(ffi, "enum ivy_rt_fail_kind", "IVY_FAIL_"))
NO_NODE = int(lib.IVY_RT_NO_NODE)
NO_PAGE = int(lib.IVY_RT_NO_PAGE)
State = enum.IntEnum("State", enum_members(ffi, "enum ivy_state", "IVY_"))
Pending = enum.IntEnum("Pending", enum_members(ffi, "enum ivy_pending", "IVY_"))
READ_OWNERSHIP = lowercase(enum_members(ffi, "enum ivy_read_ownership", "IVY_READ_"))   # default first
MANAGERS = lowercase(enum_members(ffi, "enum ivy_manager", "IVY_MGR_"))
FIRST_TOUCH = lowercase(enum_members(ffi, "enum ivy_first_touch", "IVY_TOUCH_"))   # default first
