import { describe, expect, it } from 'vitest';
import { emptyConfig } from '../config/load.js';
import { MemorySource } from '../stores/memory.js';
import { runAudit } from './audit.js';
import { renderText } from './render.js';

describe('audit text report', () => {
  it('names the first 10 prefixes of a usage pattern and counts the others, as it does the prefixes', async () => {
    const s = new MemorySource();
    // 40 services registered under leases (one prefix each), and one lock.
    for (let i = 0; i < 40; i++) s.put(`/sessions/svc${String(i).padStart(2, '0')}/i1`, '10.0.0.1:80', s.grantLease(30));
    s.put('/locks/nightly', 'holder', s.grantLease(5));
    const result = await runAudit({ source: s, config: emptyConfig() });
    expect(result.patterns.registrations).toHaveLength(40);
    const text = renderText(result);
    expect(text).toContain('  registration  /sessions/svc09/ (1 key)');
    expect(text).not.toContain('/sessions/svc10/');
    expect(text).toContain('  registration  … and 30 more prefixes (--format json lists them)');
    // Kinds with few prefixes are listed whole.
    expect(text).toContain('  lock/election /locks/ (1 key, 1 leased)');
    expect(text).not.toContain('lock/election … and');
  });
});
