/**
 * The dual-run rewrites its checkpoint document at least this often while it
 * leads, even when etcd is idle (its `updated` is a heartbeat). Verify and
 * status read it to tell a running dual-run from a stopped one. A leaf module,
 * so readers of the checkpoint do not import the dual-run itself.
 */
export const HEARTBEAT_MS = 10_000;
