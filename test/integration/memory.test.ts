/**
 * Guest memory from a memfd, end to end: PrepareMemoryUpload, the memfd sent
 * on the fd socket (SCM_RIGHTS), MapMemory (IOMMU_IOAS_MAP_FILE) and
 * UnmapMemory, with the pinned_bytes quota and registry == kernel.
 */
import * as grpc from '@grpc/grpc-js';
import { closeSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { asTenant } from '../../src/broker/ids.js';
import { createMemfd } from '../../src/kernel/memfd.js';
import { handoffExchange, uploadMemfd } from '../../src/rpc/handoff-client.js';
import { errorInfoOf } from '../../src/rpc/status.js';
import { registryMatchesKernel, startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { assignDevices, meta, TENANT } from '../helpers/lifecycle.js';

const MiB = 1n << 20n;
const U64_MAX = (1n << 64n) - 1n;
/** MOCK_APERTURE_START: with the mock IOMMU attached, IOVAs start here (kernel-uapi.md §6.3). */
const APERTURE = 1n << 24n;
const QUOTA = 8 * 1024 * 1024;

async function refusal(p: Promise<unknown>): Promise<grpc.ServiceError> {
  return p.then(
    () => {
      throw new Error('expected the call to fail');
    },
    (e: grpc.ServiceError) => e,
  );
}

describe('MapMemory / UnmapMemory', () => {
  let td: TestDaemon;
  let memfd: number;
  let contextId: string;
  let ioas: bigint;
  const pinned = () => td.daemon.broker.quotas.pinnedBytes(asTenant(TENANT));

  /** PrepareMemoryUpload + the memfd on the fd socket; returns the token for MapMemory. */
  async function upload(ctx = contextId): Promise<string> {
    const slot = await td.broker.prepareMemoryUpload({ contextId: ctx }, meta);
    await uploadMemfd(slot.socketPath, slot.token, memfd);
    return slot.token;
  }

  /** Registry == kernel, each IOAS's mappings included. */
  function mappingsMatch(ctx = contextId) {
    const { registry, kernel } = registryMatchesKernel(td, ctx);
    expect(registry).toEqual(kernel);
    return registry;
  }

  beforeAll(async () => {
    td = await startTestDaemon('linux-6.17', (c) => {
      c.quotas.tenants = { [TENANT]: { pinnedBytes: QUOTA } };
    });
    memfd = createMemfd('guest-ram', 64 * 1024 * 1024);
  });
  afterAll(async () => {
    await td?.stop();
    closeSync(memfd);
  });

  it('maps a memfd at a fixed IOVA and at one the kernel chooses', async () => {
    const [deviceId] = await assignDevices(td, 1);
    contextId = (await td.broker.openContext({ label: 'ram' }, meta)).contextId;
    const device = (await td.broker.bindDevice({ contextId, deviceId: deviceId! }, meta)).device!.handle;
    ioas = (await td.broker.allocIoas({ contextId }, meta)).ioas!.handle;
    await td.broker.attachDevice({ contextId, device, target: ioas }, meta);

    const fixed = await td.broker.mapMemory({ contextId, ioas, iova: APERTURE, fixedIova: true, length: 2n * MiB, readable: true, writeable: true, uploadToken: await upload() }, meta);
    expect(fixed).toMatchObject({ iova: APERTURE, length: 2n * MiB });
    const chosen = await td.broker.mapMemory({ contextId, ioas, length: MiB, offset: 4n * MiB, readable: true, uploadToken: await upload() }, meta);
    expect(chosen.iova).toBe(APERTURE + 2n * MiB); // the lowest free 1 MiB-aligned IOVA in the aperture
    // A successful map consumed the daemon's copy of the memfd (the kernel holds the file).
    expect(td.daemon.broker.handoffs.heldUploads).toBe(0);
    expect(pinned()).toBe(Number(3n * MiB));
    expect(mappingsMatch()).toContainEqual(expect.stringMatching(/^\d+:IOAS:\[0x1000000\+0x200000,0x1200000\+0x100000\]$/));

    const audit = readFileSync(td.auditPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(audit.filter((l) => l['operation'] === 'Handoff/UploadMemfd')).toEqual([
      expect.objectContaining({ result: 'ok', code: 'OK', contextId, objects: { result: 'received' } }),
      expect.objectContaining({ result: 'ok', code: 'OK', contextId, objects: { result: 'received' } }),
    ]);
    const mapLine = audit.find((l) => l['operation'] === 'BrokerService/MapMemory')!;
    expect(mapLine['objects']).toMatchObject({ ioas: String(ioas), iova: String(APERTURE), 'out.iova': String(APERTURE) });
    expect(JSON.stringify(mapLine)).not.toMatch(/upload_token/);
  });

  it('refuses an overlapping fixed IOVA with ALREADY_EXISTS (EEXIST) and keeps the upload for a retry', async () => {
    const token = await upload();
    const err = await refusal(td.broker.mapMemory({ contextId, ioas, iova: APERTURE + MiB, fixedIova: true, length: 2n * MiB, readable: true, uploadToken: token }, meta));
    expect(err.code).toBe(grpc.status.ALREADY_EXISTS);
    expect(errorInfoOf(err)).toMatchObject({ reason: 'ALREADY_EXISTS', metadata: { errno: 'EEXIST', kernel_op: 'ioas_map_file', field: 'iova' } });
    expect(err.details).toContain('overlaps [0x1000000, 0x1200000), [0x1200000, 0x1300000)');
    expect(pinned()).toBe(Number(3n * MiB));
    const retry = await td.broker.mapMemory({ contextId, ioas, iova: APERTURE + 4n * MiB, fixedIova: true, length: MiB, readable: true, uploadToken: token }, meta);
    expect(retry.iova).toBe(APERTURE + 4n * MiB);
    // Used up: a second map with the same token has nothing to map.
    const again = await refusal(td.broker.mapMemory({ contextId, ioas, length: MiB, readable: true, uploadToken: token }, meta));
    expect(again.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(errorInfoOf(again)?.reason).toBe('MEMORY_NOT_UPLOADED');
    mappingsMatch();
  });

  it('refuses requests the kernel would refuse, with the rule', async () => {
    const noUpload = await refusal(td.broker.mapMemory({ contextId, ioas, length: MiB, readable: true, uploadToken: 'ab'.repeat(32) }, meta));
    expect(errorInfoOf(noUpload)).toMatchObject({ reason: 'MEMORY_NOT_UPLOADED', metadata: { field: 'upload_token' } });
    const token = await upload();
    const noAccess = await refusal(td.broker.mapMemory({ contextId, ioas, length: MiB, uploadToken: token }, meta));
    expect(noAccess.code).toBe(grpc.status.INVALID_ARGUMENT);
    const iovaWithoutFixed = await refusal(td.broker.mapMemory({ contextId, ioas, iova: APERTURE, length: MiB, readable: true, uploadToken: token }, meta));
    expect(errorInfoOf(iovaWithoutFixed)?.metadata['field']).toBe('iova');
    const noLength = await refusal(td.broker.mapMemory({ contextId, ioas, readable: true, uploadToken: token }, meta));
    expect(errorInfoOf(noLength)).toMatchObject({ reason: 'MISSING_FIELD', metadata: { field: 'length' } });
    // Outside the mock aperture, and past the end of the 64 MiB memfd: EINVAL from the kernel.
    const reserved = await refusal(td.broker.mapMemory({ contextId, ioas, iova: 0x10_0000n, fixedIova: true, length: MiB, readable: true, uploadToken: token }, meta));
    expect(errorInfoOf(reserved)).toMatchObject({ reason: 'KERNEL_REJECTED', metadata: { errno: 'EINVAL' } });
    const pastEnd = await refusal(td.broker.mapMemory({ contextId, ioas, length: 2n * MiB, offset: 63n * MiB, readable: true, uploadToken: token }, meta));
    expect(errorInfoOf(pastEnd)?.metadata['errno']).toBe('EINVAL');
    // An upload token is not a device-fd token, and an upload needs its fd.
    const slot = await td.broker.prepareMemoryUpload({ contextId }, meta);
    expect(await handoffExchange(slot.socketPath, slot.token)).toEqual({ text: expect.stringMatching(/^ERR malformed: an upload carries exactly one fd/), fds: [] });
    expect(pinned()).toBe(Number(4n * MiB));
    mappingsMatch();
  });

  it('refuses maps past the pinned_bytes quota with RESOURCE_EXHAUSTED naming it', async () => {
    const err = await refusal(td.broker.mapMemory({ contextId, ioas, length: 8n * MiB, readable: true, uploadToken: await upload() }, meta));
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(errorInfoOf(err)).toMatchObject({ reason: 'QUOTA_EXCEEDED', metadata: { quota: 'pinned_bytes', limit: String(QUOTA) } });
    expect(err.details).toContain('pinned-memory quota');
    expect(pinned()).toBe(Number(4n * MiB));
    mappingsMatch();
  });

  it('unmaps whole mappings only, and releases their pinned bytes', async () => {
    const partial = await refusal(td.broker.unmapMemory({ contextId, ioas, iova: APERTURE, length: MiB }, meta));
    expect(partial.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(errorInfoOf(partial)).toMatchObject({ metadata: { errno: 'ENOENT', kernel_op: 'ioas_unmap' } });
    expect(partial.details).toContain('never split');
    const nothing = await refusal(td.broker.unmapMemory({ contextId, ioas, iova: APERTURE + 8n * MiB, length: MiB }, meta));
    expect(errorInfoOf(nothing)?.metadata['errno']).toBe('ENOENT');
    expect((await td.broker.unmapMemory({ contextId, ioas, iova: APERTURE, length: 3n * MiB }, meta)).unmappedBytes).toBe(3n * MiB);
    expect(pinned()).toBe(Number(MiB));
    mappingsMatch();
    expect((await td.broker.unmapMemory({ contextId, ioas, iova: 0n, length: U64_MAX }, meta)).unmappedBytes).toBe(MiB);
    expect(pinned()).toBe(0);
    mappingsMatch();
  });

  it('releases pinned bytes when the IOAS is destroyed and when the context closes', async () => {
    const spare = (await td.broker.allocIoas({ contextId }, meta)).ioas!.handle;
    await td.broker.mapMemory({ contextId, ioas: spare, length: 2n * MiB, readable: true, uploadToken: await upload() }, meta);
    await td.broker.mapMemory({ contextId, ioas, length: MiB, readable: true, writeable: true, uploadToken: await upload() }, meta);
    expect(pinned()).toBe(Number(3n * MiB));
    // The spare IOAS has no domain: the kernel placed 2 MiB at the first 2 MiB-aligned IOVA.
    expect(mappingsMatch()).toContainEqual(expect.stringMatching(/^\d+:IOAS:\[0x200000\+0x200000\]$/));
    await td.broker.destroyObject({ contextId, handle: spare }, meta);
    expect(pinned()).toBe(Number(MiB));
    // Uploads not mapped (refused maps keep theirs for a retry) are closed with their context.
    const held = td.daemon.broker.handoffs.heldUploads;
    await td.broker.prepareMemoryUpload({ contextId }, meta).then((s) => uploadMemfd(s.socketPath, s.token, memfd));
    expect(td.daemon.broker.handoffs.heldUploads).toBe(held + 1);
    const iommufd = td.daemon.broker.inspectContext(contextId)!.iommufd;
    await td.broker.closeContext({ contextId }, meta);
    expect(pinned()).toBe(0);
    expect(td.daemon.broker.handoffs.heldUploads).toBe(0);
    expect(td.daemon.sim!.objects(iommufd)).toEqual([]);
  });
});

describe('MapMemory on a kernel without IOMMU_IOAS_MAP_FILE', () => {
  let td: TestDaemon;
  afterAll(async () => {
    await td?.stop();
  });

  it('is UNIMPLEMENTED with the reason', async () => {
    td = await startTestDaemon('linux-6.13', (c) => {
      c.sim.withoutIoctls = ['IOMMU_IOAS_MAP_FILE'];
    });
    const { contextId } = await td.broker.openContext({}, meta);
    const ioas = (await td.broker.allocIoas({ contextId }, meta)).ioas!.handle;
    for (const call of [
      td.broker.prepareMemoryUpload({ contextId }, meta),
      td.broker.mapMemory({ contextId, ioas, length: MiB, readable: true, uploadToken: 'ab'.repeat(32) }, meta),
    ]) {
      const err = await refusal(call);
      expect(err.code).toBe(grpc.status.UNIMPLEMENTED);
      expect(errorInfoOf(err)).toMatchObject({ reason: 'KERNEL_UNSUPPORTED', metadata: { kernel_op: 'ioas_map_file' } });
      expect(err.details).toMatch(/kernel 6\.13\.0-sim has no IOMMU_IOAS_MAP_FILE \(Linux 6\.13\+\)/);
    }
  });
});
