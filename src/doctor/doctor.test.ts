import { describe, expect, it } from 'vitest';
import { unorderedProgress } from '../stores/etcd.js';

describe('etcd releases whose watch progress answers overtake queued events', () => {
  it('are the 3.4 releases before 3.4.31 and the 3.5 releases before 3.5.13', () => {
    expect(['3.4.23', '3.4.30', '3.5.0', '3.5.12', '3.3.27'].filter(unorderedProgress)).toEqual(['3.4.23', '3.4.30', '3.5.0', '3.5.12', '3.3.27']);
    expect(['3.4.31', '3.5.13', '3.5.21', '3.6.4', 'unknown'].filter(unorderedProgress)).toEqual([]);
  });
});
