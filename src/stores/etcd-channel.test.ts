import http2 from 'node:http2';
import { createServer, type AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { EtcdChannel, GrpcError } from './etcd-channel.js';
import { STATUS } from './etcd-codec.js';

/**
 * The channel's transport, against an HTTP/2 server on loopback that answers
 * as a faulty peer would (no answer, an oversized message, an error status, a
 * non-gRPC answer). What etcd answers is in test/etcd-source.test.ts, against
 * a real etcd.
 */
let server: http2.Http2Server | undefined;
let channel: EtcdChannel | undefined;

afterEach(async () => {
  channel?.close();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
  channel = undefined;
});

async function serve(onStream: (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => void): Promise<{ endpoint: string; streams: () => number; sessions: () => number }> {
  let streams = 0;
  let sessions = 0;
  server = http2.createServer();
  server.on('session', () => sessions++);
  server.on('stream', (stream, headers) => {
    streams++;
    onStream(stream, headers);
  });
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
  return { endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, streams: () => streams, sessions: () => sessions };
}

function open(endpoint: string, options: { timeoutMs?: number; maxMessageBytes?: number } = {}): EtcdChannel {
  channel = new EtcdChannel({ endpoints: [endpoint], timeoutMs: options.timeoutMs ?? 5_000, maxMessageBytes: options.maxMessageBytes ?? 1024 });
  return channel;
}

async function failure(call: Promise<unknown>): Promise<GrpcError> {
  const err = await call.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(GrpcError);
  return err as GrpcError;
}

describe('EtcdChannel (HTTP/2 transport)', () => {
  it('fails a call nothing answers with DEADLINE_EXCEEDED at its deadline, and makes the next call on a new connection', async () => {
    const peer = await serve(() => undefined);
    const ch = open(peer.endpoint, { timeoutMs: 300 });
    const began = Date.now();
    const err = await failure(ch.unary(STATUS, undefined));
    expect(err.code).toBe(4);
    expect(err.message).toBe('4 DEADLINE_EXCEEDED: Deadline exceeded');
    expect(Date.now() - began).toBeGreaterThanOrEqual(250);
    expect(Date.now() - began).toBeLessThan(3_000);
    await failure(ch.unary(STATUS, undefined));
    expect(peer.streams()).toBe(2);
    expect(peer.sessions()).toBe(2);
  });

  it('refuses an answer larger than the limit from its frame header, as RESOURCE_EXHAUSTED', async () => {
    const peer = await serve((stream) => {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      const header = Buffer.alloc(5);
      header.writeUInt32BE(4096, 1);
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      stream.end(Buffer.concat([header, Buffer.alloc(4096)]));
    });
    const err = await failure(open(peer.endpoint, { maxMessageBytes: 1024 }).unary(STATUS, undefined));
    expect(err.code).toBe(8);
    expect(err.message).toBe('8 RESOURCE_EXHAUSTED: Received message larger than max (4096 vs 1024)');
  });

  it("reports etcd's status and its percent-encoded message, as grpc-js words them", async () => {
    const peer = await serve((stream) => {
      // Trailers-only, as etcd answers an error.
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '11', 'grpc-message': 'etcdserver:%20mvcc:%20required%20revision%20has%20been%20compacted' }, { endStream: true });
    });
    const err = await failure(open(peer.endpoint).unary(STATUS, undefined));
    expect(err.code).toBe(11);
    expect(err.message).toBe('11 OUT_OF_RANGE: etcdserver: mvcc: required revision has been compacted');
  });

  it('takes an answer that is not gRPC (another HTTP/2 service) for an unreachable etcd, with its HTTP status', async () => {
    const peer = await serve((stream) => {
      stream.respond({ ':status': 404, 'content-type': 'text/plain' });
      stream.end('not found');
    });
    const err = await failure(open(peer.endpoint).unary(STATUS, undefined));
    expect(err.code).toBe(14);
    expect(err.message).toBe('14 UNAVAILABLE: Received HTTP status code 404');
  });

  it('says "Protocol error" of a server that takes the connection and closes it without speaking HTTP/2 (TLS named with http://)', async () => {
    // A TLS server's answer to bytes that are no handshake: an alert, then the end of the connection.
    const tlsPort = createServer((socket) => socket.write(Buffer.from([0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46]), () => socket.destroy()));
    await new Promise<void>((resolve) => tlsPort.listen(0, '127.0.0.1', resolve));
    const ch = open(`http://127.0.0.1:${(tlsPort.address() as AddressInfo).port}`);
    try {
      const err = await failure(ch.unary(STATUS, undefined));
      expect(err.code).toBe(14);
      expect(err.message).toMatch(/^14 UNAVAILABLE: Protocol error: the server took the connection and closed it without speaking HTTP\/2 \(an https:\/\/ endpoint named with http:\/\//);
    } finally {
      ch.close();
      await new Promise<void>((resolve) => tlsPort.close(() => resolve()));
    }
  });

  it('decodes a message that arrives in many chunks, its frame header split between two', async () => {
    const peer = await serve((stream) => {
      // A StatusResponse: version (2) "3.4.23", then raft_index (8) 9.
      const message = Buffer.from([0x12, 0x06, ...Buffer.from('3.4.23'), 0x40, 0x09]);
      const framed = Buffer.alloc(5 + message.length);
      framed.writeUInt32BE(message.length, 1);
      message.copy(framed, 5);
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      const parts = [framed.subarray(0, 3), framed.subarray(3, 6), framed.subarray(6, 9), framed.subarray(9)];
      const next = () => {
        const part = parts.shift()!;
        if (parts.length === 0) stream.end(part);
        else stream.write(part, () => setTimeout(next, 5));
      };
      next();
    });
    const status = await open(peer.endpoint).unary(STATUS, undefined);
    expect(status.version).toBe('3.4.23');
  });
});
