'use strict';
// google.rpc.Status and google.rpc.ErrorInfo in `grpc-status-details-bin`, hand-coded.
//
// The sidecar (and the Python interceptors) put a google.rpc.Status whose `details` hold a
// google.rpc.ErrorInfo {reason, domain: "authsidecar.v1"}; the reason is the contract. The
// three messages are tiny, so rather than depend on protobufjs (only a transitive dependency
// of @grpc/proto-loader) we read and write the protobuf wire format directly:
// https://protobuf.dev/programming-guides/encoding/ (varints, wire types 0/1/2/5).
//   Status    { int32 code = 1; string message = 2; repeated Any details = 3; }
//   Any       { string type_url = 1; bytes value = 2; }
//   ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }

const STATUS_DETAILS_KEY = 'grpc-status-details-bin';
const ERROR_DOMAIN = 'authsidecar.v1';
const ERROR_INFO_TYPE = 'type.googleapis.com/google.rpc.ErrorInfo';

function readVarint(buf, pos) {
  let result = 0;
  let scale = 1;
  for (let i = 0; i < 10; i += 1) {
    if (pos >= buf.length) throw new Error('truncated varint');
    const byte = buf[pos];
    pos += 1;
    result += (byte & 0x7f) * scale;
    if ((byte & 0x80) === 0) return [result, pos];
    scale *= 128;
  }
  throw new Error('varint too long');
}

// Yields [fieldNumber, wireType, value] with value a number (varint) or a Buffer (bytes).
function* fields(buf) {
  let pos = 0;
  while (pos < buf.length) {
    let key;
    [key, pos] = readVarint(buf, pos);
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === 0) {
      let value;
      [value, pos] = readVarint(buf, pos);
      yield [field, wire, value];
    } else if (wire === 2) {
      let length;
      [length, pos] = readVarint(buf, pos);
      if (pos + length > buf.length) throw new Error('truncated field');
      yield [field, wire, buf.subarray(pos, pos + length)];
      pos += length;
    } else if (wire === 1 || wire === 5) {
      pos += wire === 1 ? 8 : 4;
    } else {
      throw new Error(`unsupported wire type ${wire}`);
    }
  }
}

function decodeStatus(buf) {
  const status = { code: 0, message: '', details: [] };
  for (const [field, wire, value] of fields(buf)) {
    if (field === 1 && wire === 0) status.code = value;
    else if (field === 2 && wire === 2) status.message = value.toString('utf8');
    else if (field === 3 && wire === 2) {
      const any = { typeUrl: '', value: Buffer.alloc(0) };
      for (const [f, w, v] of fields(value)) {
        if (f === 1 && w === 2) any.typeUrl = v.toString('utf8');
        else if (f === 2 && w === 2) any.value = v;
      }
      status.details.push(any);
    }
  }
  return status;
}

function decodeErrorInfo(buf) {
  const info = { reason: '', domain: '', metadata: {} };
  for (const [field, wire, value] of fields(buf)) {
    if (field === 1 && wire === 2) info.reason = value.toString('utf8');
    else if (field === 2 && wire === 2) info.domain = value.toString('utf8');
    else if (field === 3 && wire === 2) {
      let key = '';
      let val = '';
      for (const [f, w, v] of fields(value)) {
        if (f === 1 && w === 2) key = v.toString('utf8');
        else if (f === 2 && w === 2) val = v.toString('utf8');
      }
      info.metadata[key] = val;
    }
  }
  return info;
}

/** The authsidecar ErrorInfo reason in a call's trailers, or '' when there is none. */
function errorReason(metadata) {
  if (!metadata || typeof metadata.get !== 'function') return '';
  for (const raw of metadata.get(STATUS_DETAILS_KEY)) {
    try {
      const status = decodeStatus(Buffer.from(raw));
      for (const detail of status.details) {
        if (!detail.typeUrl.endsWith('/google.rpc.ErrorInfo')) continue;
        const info = decodeErrorInfo(detail.value);
        if (info.domain === ERROR_DOMAIN) return info.reason;
      }
    } catch {
      return '';
    }
  }
  return '';
}

function varint(value) {
  const bytes = [];
  let rest = value;
  while (rest >= 0x80) {
    bytes.push((rest % 128) | 0x80);
    rest = Math.floor(rest / 128);
  }
  bytes.push(rest);
  return Buffer.from(bytes);
}

function bytesField(field, value) {
  const body = Buffer.isBuffer(value) ? value : Buffer.from(value, 'utf8');
  return Buffer.concat([varint(field * 8 + 2), varint(body.length), body]);
}

/** A serialized google.rpc.Status carrying ErrorInfo{reason, domain: authsidecar.v1}. */
function encodeStatusDetails(code, message, reason) {
  const info = Buffer.concat([bytesField(1, reason), bytesField(2, ERROR_DOMAIN)]);
  const any = Buffer.concat([bytesField(1, ERROR_INFO_TYPE), bytesField(2, info)]);
  const parts = [];
  if (code) parts.push(varint(8), varint(code));
  if (message) parts.push(bytesField(2, message));
  parts.push(bytesField(3, any));
  return Buffer.concat(parts);
}

module.exports = {
  ERROR_DOMAIN,
  STATUS_DETAILS_KEY,
  decodeErrorInfo,
  decodeStatus,
  encodeStatusDetails,
  errorReason,
};
