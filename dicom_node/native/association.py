"""One association of the native receiver: negotiation, then C-ECHO and C-STORE until release or abort.

Runs in its own thread on a blocking socket. Timeouts: the A-ASSOCIATE-RQ must arrive within
``acse_timeout`` seconds of the connection (the ARTIM timer, PS3.8 9.1.5), and an established
association idle for ``network_timeout`` seconds is aborted. A PDU that breaks PS3.8, a command set that
does not parse or a message on a context that was not accepted aborts the association (A-ABORT, service
provider); everything the node acknowledged before is in the spool.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dicom_node import scp_audit, tls
from dicom_node.header_scan import Scan
from dicom_node.native import pdu
from dicom_node.native.dimse import Command, CommandError, CommandField, parse_command, response
from dicom_node.native.file_meta import file_header
from dicom_node.native.pdu import ContextResult, PduError, PduType
from dicom_node.native.wire import ConnectionClosedError, Wire
from dicom_node.presentation import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, VERIFICATION
from dicom_node.spool_incoming import IncomingInstance
from dicom_node.status import EchoStatus, StoreStatus
from dicom_node.store_handling import StoreRequest, read_header_start, store_instance

if TYPE_CHECKING:
    from dicom_node.native.server import NativeServer

logger = logging.getLogger(__name__)

__all__ = ["IMPLEMENTATION_UID", "IMPLEMENTATION_VERSION", "NativeAssociation"]

#: the node's Implementation Class UID (fixed, derived under pydicom's root from the product name)
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.51885698210628562683603695710244587777"
IMPLEMENTATION_VERSION = "FAIRNODE_NATIVE"
_VERIFICATION_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2")
_SUPPORTED = {str(s): tuple(str(t) for t in TRANSFER_SYNTAXES) for s in STORAGE_SOP_CLASSES}
_SUPPORTED[str(VERIFICATION)] = _VERIFICATION_SYNTAXES
#: largest A-ASSOCIATE-RQ accepted (a real one is a few kB)
_MAX_RQ = 1 << 20
UNRECOGNISED_OPERATION = 0x0211
#: longest a release waits for the association's instances to be written and indexed
_SETTLE_SECONDS = 60.0


class _ClosedError(Exception):
    """The peer closed the connection, or sent A-ABORT / A-RELEASE: nothing more to do."""


@dataclass(frozen=True)
class _Context:
    abstract_syntax: str
    transfer_syntax: str


class NativeAssociation:
    """The connection from one requestor, served by :meth:`run` in its own thread."""

    def __init__(self, server: NativeServer, sock: socket.socket, address: tuple[str, int]):
        self.server = server
        self.sock = sock
        self.address = address
        self.peer = str(address[0])
        self.calling = "unknown"
        self.contexts: dict[int, _Context] = {}
        self.peer_max_pdu = 0
        self.messages = 0
        self._wire = Wire(sock)
        self._incoming: IncomingInstance | None = None  # the C-STORE dataset being received
        self._header_start: Scan | None = None  # its header, walked in its first fragment

    # -- the wire -----------------------------------------------------------------------------------------
    def _read_pdu(self, limit: int) -> tuple[int, bytearray]:
        """The next PDU's type and body (a ``bytearray`` of its own: fragments are views of it)."""
        try:
            head = self._wire.read(6)
        except ConnectionClosedError:
            raise _ClosedError("connection closed") from None
        kind, _, length = struct.unpack(">BBI", head)
        if length > limit:
            raise PduError(f"PDU of type 0x{kind:02X} with {length} bytes; at most {limit} are accepted")
        try:
            return kind, self._wire.read_body(length)
        except ConnectionClosedError:
            raise _ClosedError(f"connection closed inside a PDU of {length} bytes") from None

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _send_message(self, context_id: int, command: bytes) -> None:
        """A command set in as many P-DATA-TF as the peer's maximum PDU length needs."""
        most = self.peer_max_pdu - 6 if self.peer_max_pdu > 6 else len(command)
        chunks = [command[i : i + most] for i in range(0, len(command), most)] or [b""]
        for i, chunk in enumerate(chunks):
            self._send(pdu.p_data(context_id, 0x03 if i == len(chunks) - 1 else 0x01, chunk))

    # -- lifetime -----------------------------------------------------------------------------------------
    def run(self) -> None:
        admitted = False
        try:
            if isinstance(self.sock, ssl.SSLSocket) and not tls.handshake(
                self.sock, self.address, self.server.settings.ae_title, self.server.handshake_timeout
            ):
                return
            self.sock.settimeout(self.server.settings.acse_timeout_seconds)
            admitted = self._negotiate()
            if admitted:
                self.sock.settimeout(self.server.settings.network_timeout_seconds)
                self._serve()
        except _ClosedError as exc:
            logger.debug("association from %s (%s): %s", self.calling, self.peer, exc)
        except (PduError, CommandError) as exc:
            logger.warning("association from %s (%s) aborted: %s", self.calling, self.peer, exc)
            self._abort(reason=6 if isinstance(exc, PduError) else 0)
        except TimeoutError:
            logger.warning("association from %s (%s) aborted: nothing received in time", self.calling, self.peer)
            self._abort()
        except OSError as exc:
            logger.info("association from %s (%s) ended: %s", self.calling, self.peer, exc)
        except Exception:  # a bug: this association ends, the node serves on
            logger.exception("association from %s (%s) aborted by an internal error", self.calling, self.peer)
            self._abort()
        finally:
            if admitted:
                self.server.association_guard.release(self)
            self.close()

    def _abort(self, reason: int = 0) -> None:
        with contextlib.suppress(OSError):
            self._send(pdu.abort(source=2, reason=reason))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError as exc:
            logger.debug("closing the connection from %s: %s", self.peer, exc)

    def shutdown(self) -> None:
        """Called from another thread (server stop): end the blocking read."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    # -- negotiation --------------------------------------------------------------------------------------
    def _reject(self, rq: pdu.AssociateRequest, key: tuple[int, int, int], detail: str | None = None) -> bool:
        self._send(pdu.associate_rj(*key))
        scp_audit.record_rejected(rq.calling_ae or "unknown", rq.called_ae or "unknown", self.peer, key, detail)
        return False

    def _negotiate(self) -> bool:
        kind, body = self._read_pdu(_MAX_RQ)
        if kind != PduType.ASSOCIATE_RQ:
            raise PduError(f"PDU type 0x{kind:02X} before an A-ASSOCIATE-RQ")
        rq = pdu.parse_associate_rq(body)
        self.calling = rq.calling_ae
        settings = self.server.settings
        if not rq.protocol_version & 1:
            return self._reject(rq, (1, 2, 2))
        if rq.application_context != pdu.APPLICATION_CONTEXT:
            return self._reject(rq, (1, 1, 2))
        allowed = [t.strip() for t in settings.allowed_calling_aes]
        if allowed and rq.calling_ae not in allowed:
            return self._reject(rq, (1, 1, 3))
        if settings.require_called_ae and rq.called_ae != settings.ae_title.strip():
            return self._reject(rq, (1, 1, 7))
        verdict = self.server.association_guard.admit(self, rq.calling_ae, self.peer)
        if verdict is not None:
            rejection, refusal = verdict
            return self._reject(rq, rejection.value, refusal.reason)
        results = []
        for pc in rq.contexts:
            offered = _SUPPORTED.get(pc.abstract_syntax)
            if offered is None:
                results.append((pc.context_id, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, ""))
                continue
            chosen = next((ts for ts in pc.transfer_syntaxes if ts in offered), None)
            if chosen is None:
                results.append((pc.context_id, ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED, ""))
                continue
            self.contexts[pc.context_id] = _Context(pc.abstract_syntax, chosen)
            results.append((pc.context_id, ContextResult.ACCEPTANCE, chosen))
        self.peer_max_pdu = rq.max_pdu
        try:
            self._send(
                pdu.associate_ac(
                    rq,
                    results,
                    max_pdu=settings.max_pdu_bytes,
                    implementation_uid=IMPLEMENTATION_UID,
                    implementation_version=IMPLEMENTATION_VERSION,
                )
            )
        except BaseException:
            self.server.association_guard.release(self)
            raise
        scp_audit.record_accepted(rq.calling_ae or "unknown", rq.called_ae or "unknown", self.peer)
        logger.debug("association from %s (%s): %d contexts accepted", rq.calling_ae, self.peer, len(self.contexts))
        return True

    # -- messages -----------------------------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            self._serve_messages()
        finally:
            self._incoming = None  # the association ended inside a dataset: nothing of it is kept

    def _serve_messages(self) -> None:
        limit = self.server.settings.max_pdu_bytes + 6 if self.server.settings.max_pdu_bytes else 1 << 30
        command_parts: list[bytes] = []
        data_parts: list[bytes] = []  # a dataset kept in memory (no temporary file could be made)
        command: Command | None = None
        command_context = 0
        received = 0
        while True:
            kind, body = self._read_pdu(limit)
            if kind == PduType.RELEASE_RQ:  # confirmed once what it stored is written and indexed
                if not self.server.spool.settle(timeout=_SETTLE_SECONDS):
                    logger.warning("association from %s released before its instances were indexed", self.calling)
                self._send(pdu.release_rp())
                raise _ClosedError("released")
            if kind == PduType.ABORT:
                raise _ClosedError("aborted by the requestor")
            if kind != PduType.P_DATA_TF:
                raise PduError(f"unexpected PDU type 0x{kind:02X} on an established association")
            for context_id, header, fragment in pdu.iter_pdvs(body):
                if context_id not in self.contexts:
                    raise PduError(f"message on presentation context {context_id}, which was not accepted")
                if header & 0x01:  # command fragment
                    if command is not None:
                        raise PduError("a command arrived before the previous command's dataset")
                    command_parts.append(bytes(fragment))
                    if header & 0x02:
                        command = parse_command(b"".join(command_parts))
                        command_parts.clear()
                        command_context = context_id
                        if not command.has_dataset:
                            self._dispatch(command, context_id, b"")
                            command = None
                        else:
                            self._incoming = self._begin(command, context_id)
                else:  # dataset fragment
                    if command is None or context_id != command_context:
                        raise PduError("a dataset fragment without its command")
                    received += len(fragment)
                    if received > self.server.max_instance_bytes:  # read on, keep nothing
                        self._incoming = None
                        data_parts.clear()
                    elif command.command_field == CommandField.C_STORE_RQ:
                        if self._incoming is not None:
                            self._incoming.add(fragment)
                        else:
                            data_parts.append(bytes(fragment))
                        if received == len(fragment):  # the first fragment: its header, parsed while the rest comes
                            self._header_start = read_header_start(
                                bytes(fragment), self.contexts[context_id].transfer_syntax
                            )
                    if header & 0x02:
                        if received > self.server.max_instance_bytes:
                            self._refuse_oversize(command, context_id, received)
                        else:
                            incoming, self._incoming = self._incoming, None
                            self._dispatch(command, context_id, incoming or b"".join(data_parts))
                        data_parts.clear()
                        self._header_start = None
                        received = 0
                        command = None

    def _begin(self, command: Command, context_id: int) -> IncomingInstance | None:
        """What a C-STORE's dataset is gathered in as it arrives (None: another command; its dataset is
        joined from ``data_parts``)."""
        if command.command_field != CommandField.C_STORE_RQ:
            return None
        head = file_header(
            sop_class_uid=command.sop_class_uid,
            sop_instance_uid=command.sop_instance_uid,
            transfer_syntax=self.contexts[context_id].transfer_syntax,
            implementation_uid=IMPLEMENTATION_UID,
            implementation_version=IMPLEMENTATION_VERSION,
            source_ae=self.calling,
        )
        return IncomingInstance(head)

    def _dispatch(self, command: Command, context_id: int, data: bytes | IncomingInstance) -> None:
        self.messages += 1
        field = command.command_field
        if field == CommandField.C_ECHO_RQ:
            logger.debug("C-ECHO from %s", self.calling)
            self._send_message(context_id, response(command, int(EchoStatus.SUCCESS)))
        elif field == CommandField.C_STORE_RQ:
            status = self._store(command, context_id, data)
            self._send_message(context_id, response(command, int(status)))
        elif field == CommandField.C_CANCEL_RQ:
            return
        else:
            logger.warning("association from %s: DIMSE command 0x%04X not performed", self.calling, field)
            self._send_message(context_id, response(command, UNRECOGNISED_OPERATION))

    def _refuse_oversize(self, command: Command, context_id: int, nbytes: int) -> None:
        """An instance above the size limit: its bytes were read and dropped as they came."""
        refused = self.server.store_guards.check(calling_ae=self.calling, nbytes=nbytes)
        status = refused[0] if refused is not None else StoreStatus.INSTANCE_TOO_LARGE
        logger.warning(
            "store of SOP %s from %s refused (%s): %s",
            command.sop_instance_uid,
            self.calling,
            status.name,
            refused[1].reason if refused is not None else f"{nbytes} bytes",
        )
        self._send_message(context_id, response(command, int(status)))

    def _store(self, command: Command, context_id: int, data: bytes | IncomingInstance) -> StoreStatus:
        syntax = self.contexts[context_id].transfer_syntax
        raw = data.dataset if isinstance(data, IncomingInstance) else data
        request = StoreRequest(command.sop_class_uid, command.sop_instance_uid, syntax, raw, self.calling)

        def encode() -> bytes:
            header = file_header(
                sop_class_uid=command.sop_class_uid,
                sop_instance_uid=command.sop_instance_uid,
                transfer_syntax=syntax,
                implementation_uid=IMPLEMENTATION_UID,
                implementation_version=IMPLEMENTATION_VERSION,
                source_ae=self.calling,
            )
            return header + raw

        try:
            return store_instance(
                request,
                self.server.spool,
                self.server.store_guards,
                data if isinstance(data, IncomingInstance) else encode,
                self._header_start,
            )
        except Exception:  # a bug must not leave the sender without an answer
            logger.exception("store from %s of SOP %s failed", self.calling, command.sop_instance_uid)
            return StoreStatus.PROCESSING_FAILURE
