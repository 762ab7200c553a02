import { describe, expect, it } from 'vitest';
import { ConfigError, handoffSocketPath, parseConfig } from '../../src/config/config.js';

const bad = (raw: unknown) => {
  try {
    parseConfig(raw, 'cfg.json');
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error('expected a ConfigError');
};

describe('config parsing', () => {
  it('accepts a full config', () => {
    const cfg = parseConfig(
      {
        backend: 'sim',
        socket: { path: '/run/x.sock', mode: '0660', gid: 1000 },
        sim: { profile: 'linux-6.13', devices: [{ bdf: '0000:01:00.0', vendorId: 1, deviceId: 2, iommuGroup: 3, cdev: 'vfio0' }] },
        assignments: { '0000:01:00.0': 'acme' },
        identity: { defaultTenant: 'ops', rules: [{ uid: 1000, tenant: 'acme' }, { uri: 'spiffe://x/y', admin: true }] },
        tcp: { address: '0.0.0.0:9443', caFile: 'ca', certFile: 'c', keyFile: 'k' },
        quotas: { default: { contexts: 4 }, tenants: { acme: { objects: 10 } } },
        metrics: { address: '[::1]:9473' },
        audit: { path: '', sync: 'none' },
        handoff: { leaseSeconds: 2.5 },
      },
      'cfg.json',
    );
    expect(cfg.handoff).toEqual({ socketPath: undefined, leaseSeconds: 2.5 });
    // The fd socket sits beside the gRPC socket unless configured.
    expect(handoffSocketPath(cfg)).toBe('/run/x-fd.sock');
    expect(handoffSocketPath({ ...cfg, handoff: { socketPath: '/run/fds.sock', leaseSeconds: 1 } })).toBe('/run/fds.sock');
    expect(cfg.socket).toEqual({ path: '/run/x.sock', mode: 0o660, gid: 1000 });
    expect(cfg.identity.rules).toEqual([{ uid: 1000, tenant: 'acme' }, { uri: 'spiffe://x/y', admin: true }]);
    expect(cfg.quotas.default.contexts).toBe(4);
    expect(cfg.quotas.tenants['acme']).toEqual({ objects: 10 });
    expect(cfg.audit).toEqual({ path: '', sync: 'none' });
  });

  it('names the offending key for every kind of mistake', () => {
    expect(bad({ sockets: {} })).toMatch(/^cfg\.json\.sockets: unknown setting/);
    expect(bad({ socket: { mode: '0666' } })).toMatch(/socket\.mode: a world-writable socket/);
    expect(bad({ sim: { profile: 'linux-5.4' } })).toMatch(/sim\.profile: expected one of linux-6\.13, linux-6\.17/);
    expect(bad({ identity: { rules: [{ uid: 1, gid: 2, tenant: 'a' }] } })).toMatch(/identity\.rules\[0\]: give exactly one of uid, gid/);
    expect(bad({ identity: { rules: [{ uid: 1 }] } })).toMatch(/identity\.rules\[0\]: give exactly one of "admin": true or "tenant"/);
    expect(bad({ identity: { rules: [{ uid: 1, tenant: 'Bad Name' }] } })).toMatch(/identity\.rules\[0\]\.tenant/);
    expect(bad({ tcp: { address: '0.0.0.0:9443' } })).toMatch(/tcp: mTLS is required for TCP; missing caFile, certFile, keyFile/);
    expect(bad({ quotas: { default: { contexts: -1 } } })).toMatch(/quotas\.default\.contexts/);
    expect(bad({ metrics: { address: 'nowhere' } })).toMatch(/metrics\.address: expected HOST:PORT/);
    expect(bad({ handoff: { leaseSeconds: 0 } })).toMatch(/handoff\.leaseSeconds: expected a number/);
    expect(bad({ handoff: { path: '/x' } })).toMatch(/handoff\.path: unknown setting \(known: socketPath, leaseSeconds\)/);
    expect(bad({ sim: { withoutIoctls: 'IOMMU_IOAS_MAP_FILE' } })).toMatch(/sim\.withoutIoctls: expected an array/);
  });
});
