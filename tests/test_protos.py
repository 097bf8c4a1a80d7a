"""The dispatch.v1 contract: generated code up to date, every element documented, buf naming, numbers shared with the engine."""

from __future__ import annotations

import enum
import importlib.util
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

import _fastpath
from dispatcher._gen.dispatch.v1 import admin_pb2, common_pb2, dispatch_pb2

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("protos_generate", ROOT / "protos" / "generate.py")
assert _spec is not None and _spec.loader is not None
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)


def test_regenerating_gives_byte_identical_files(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    assert generate.differences(tmp_path) == []
    assert (tmp_path / "dispatch" / "v1" / "dispatch_pb2_grpc.py").exists()


def test_generated_imports_use_the_package_path() -> None:
    for path in (ROOT / "dispatcher" / "_gen" / "dispatch" / "v1").glob("*.py*"):
        for line in path.read_text().splitlines():
            assert not line.startswith(("from dispatch.v1", "import dispatch.v1")), f"{path.name}: {line}"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[descriptor_pb2.FileDescriptorProto]:
    import grpc_tools
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("fds") / "set.pb"
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'protos'}",
            f"-I{well_known}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *generate.SOURCES,
        ]
    )
    assert code == 0
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return list(fds.file)


def _documented(fd: descriptor_pb2.FileDescriptorProto) -> set[tuple[int, ...]]:
    return {tuple(loc.path) for loc in fd.source_code_info.location if loc.leading_comments.strip()}


def test_every_rpc_message_field_and_enum_value_is_documented(files: list[descriptor_pb2.FileDescriptorProto]) -> None:
    missing = []
    for fd in files:
        assert fd.package == "dispatch.v1"
        docs = _documented(fd)
        for i, message in enumerate(fd.message_type):
            if (4, i) not in docs:
                missing.append(message.name)
            missing += [f"{message.name}.{f.name}" for j, f in enumerate(message.field) if (4, i, 2, j) not in docs]
        for i, enum_type in enumerate(fd.enum_type):
            if (5, i) not in docs:
                missing.append(enum_type.name)
            missing += [v.name for j, v in enumerate(enum_type.value) if (5, i, 2, j) not in docs]
        for i, service in enumerate(fd.service):
            if (6, i) not in docs:
                missing.append(service.name)
            missing += [f"{service.name}.{m.name}" for j, m in enumerate(service.method) if (6, i, 2, j) not in docs]
    assert missing == []


def _snake(name: str) -> str:
    return "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(name)).upper()


def test_enum_values_are_prefixed_and_zero_is_unspecified(files: list[descriptor_pb2.FileDescriptorProto]) -> None:
    for fd in files:
        for enum_type in fd.enum_type:
            prefix = _snake(enum_type.name) + "_"
            assert enum_type.value[0].number == 0 and enum_type.value[0].name == prefix + "UNSPECIFIED"
            assert all(v.name.startswith(prefix) for v in enum_type.value)


@pytest.mark.parametrize(
    "model",
    [
        _fastpath.Reason,
        _fastpath.Strategy,
        _fastpath.OfflineRule,
        _fastpath.MainAccountMode,
        _fastpath.Presence,
        _fastpath.Client,
        _fastpath.Role,
        _fastpath.ConversationType,
        _fastpath.OrderState,
        _fastpath.ConversationEvent,
        _fastpath.WaitKind,
    ],
)
def test_engine_enum_numbers_equal_the_proto_numbers(model: type[enum.IntEnum]) -> None:
    proto = common_pb2.DESCRIPTOR.enum_types_by_name[model.__name__]
    prefix = _snake(model.__name__) + "_"
    names = {v.number: v.name.removeprefix(prefix) for v in proto.values}
    expected = {m.value: ("UNSPECIFIED" if m.name == "NONE" else m.name) for m in model}
    assert names == expected


def test_fixed_contract_names() -> None:
    dispatch = dispatch_pb2.DESCRIPTOR.services_by_name["Dispatch"]
    assert {m.name for m in dispatch.methods} >= {
        "Dispatch", "DispatchBatch", "DispatchStream", "SetPresence", "ReportConversation", "ClaimFromPool", "WatchAssignments",
    }  # fmt: skip
    stream = dispatch.methods_by_name["DispatchStream"]
    assert stream.input_type.name == "DispatchBatchRequest" and stream.output_type.name == "DispatchBatchResponse"
    admin = admin_pb2.DESCRIPTOR.services_by_name["Admin"]
    assert admin.methods_by_name["GetShopState"].output_type.name == "ShopState"
    response = dispatch_pb2.DispatchResponse.DESCRIPTOR
    assert response.fields_by_name["error"].message_type.full_name == "google.rpc.Status"
    # Defaults proto3 cannot express as zero are carried by field presence.
    shop = admin_pb2.ShopConfig.DESCRIPTOR.fields_by_name
    assert all(
        shop[n].has_presence
        for n in ("affinity_window", "staging_first_cap", "busy_threshold", "affinity_may_exceed_capacity")
    )
    agent = admin_pb2.Agent.DESCRIPTOR.fields_by_name
    assert agent["weight"].has_presence and agent["chat_permission"].has_presence
