import { afterAll, describe, expect, it } from 'vitest';
import { EtcdSource } from './etcd.js';

/** grpc-js's error for a failed call: "<code> <NAME>: <details>". */
function grpcError(message: string): Error {
  return Object.assign(new Error(message), { code: 14, details: message.replace(/^\d+ [A-Z_]+: /, '') });
}

describe('EtcdSource.toError: what the operator is told', () => {
  // No call is made: the source only names the endpoint in its messages.
  const source = new EtcdSource({ endpoints: ['https://etcd-1.example:2379'] });
  afterAll(() => source.close());

  it('an etcd with auth on and no user given: etcd_auth_required (exit 2), saying what to set', () => {
    const err = source.toError(grpcError('3 INVALID_ARGUMENT: etcdserver: user name is empty'), 'status');
    expect(err).toMatchObject({ code: 'etcd_auth_required', exitCode: 2, hint: expect.stringContaining('ETCDCTL_USER and ETCDCTL_PASSWORD') });
    expect(err.message).toContain('https://etcd-1.example:2379');
  });

  it("a certificate that does not name the endpoint's host: etcd_tls_failed with a hint about its names, not its CA", () => {
    const err = source.toError(grpcError("14 UNAVAILABLE: No connection established. Last error: Error [ERR_TLS_CERT_ALTNAME_INVALID]: Hostname/IP does not match certificate's altnames: Host: etcd-1.example. is not in the cert's altnames: DNS:localhost"), 'status');
    expect(err).toMatchObject({ code: 'etcd_tls_failed', exitCode: 3, hint: expect.stringContaining('subjectAltName') });
    const unsigned = source.toError(grpcError('14 UNAVAILABLE: No connection established. Last error: Error: unable to verify the first certificate'), 'status');
    expect(unsigned).toMatchObject({ code: 'etcd_tls_failed', hint: expect.stringContaining('the CA must sign') });
  });

  it('an HTTP server that is not etcd (a 404): etcd_unreachable with the "does not speak etcd\'s gRPC" hint', () => {
    const err = source.toError(Object.assign(new Error('12 UNIMPLEMENTED: Received HTTP status code 404'), { code: 12 }), 'status');
    expect(err).toMatchObject({ code: 'etcd_unreachable', exitCode: 3, hint: expect.stringContaining("does not speak etcd's gRPC") });
  });
});
