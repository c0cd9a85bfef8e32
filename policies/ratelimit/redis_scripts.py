"""The Lua scripts behind the shared rate limits (``redis_buckets.py`` sends them).

``ACQUIRE`` admits one request against all of its limit set's limits atomically (takes from every limit
or from none), and may take a process's lease of the buckets with it; ``APPLY`` runs settlements and
quota lessons, in order, under one ``TIME``: the updates deferred to one round trip go in one call.
"""
from __future__ import annotations

PRELUDE = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local day = math.floor(now / 86400000)
local function bucket(key, f, cap, rate)
  local v = redis.call('HMGET', key, f, f .. '@', f .. '~', f .. '~@')
  local held = 0
  if v[3] and v[4] and tonumber(v[4]) > now then held = tonumber(v[3]) end  -- never granted: no expiry
  if not v[1] then return cap - held, held end
  return math.min(cap - held, tonumber(v[1]) + (now - tonumber(v[2])) * rate), held
end
"""

# KEYS: hash, slots zset, and the cooldown flag for entities that can be paused. ARGV: n, member, lease_ms,
# hash_ttl_ms, then n x (kind b|s|d, field, capacity, rate per ms, amount), then optionally n lease sizes.
# Returns {ok, failed index (-1 cooldown), wait ms (-1 never), free per limit..., leased}; takes from every
# limit or from none. With n lease sizes, n releases and hold_ms, an admitted request also takes a lease
# (the sizes on top of its amounts, ``policies.ratelimit.lease``) when every bucket keeps at least
# LEASE_FLOOR x its capacity after both; free per limit is then what is left after the lease. Either way
# the releases (what the asking process has spent from its lease since it last asked) stop counting as held.
#
# Leases held: a bucket's field ``f~`` is what processes hold in leases (granted, not yet given back) and
# ``f~@`` when that figure lapses (every lease has expired by then: ``hold_ms`` past the latest grant). A
# bucket never refills above its capacity minus what is held, so the shared level plus every lease never
# exceeds the capacity: leases admit nothing a single bucket would not have admitted.
LEASE_FLOOR = 0.5
ACQUIRE = PRELUDE + """
local n = tonumber(ARGV[1])
local failed, wait = 0, 0
if KEYS[3] then
  local cool = redis.call('PTTL', KEYS[3])
  if cool > 0 then failed, wait = -1, cool end
end
local free, held = {}, {}
for i = 1, n do
  local b = 4 + (i - 1) * 5
  local kind, f, cap, rate, amt = ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]),
    tonumber(ARGV[b + 5])
  local lvl, need = cap, 0
  if kind == 'b' then
    lvl, held[i] = bucket(KEYS[1], f, cap, rate)
    need = (amt - lvl) / rate
  elseif kind == 's' then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
    lvl = cap - redis.call('ZCARD', KEYS[2])
  else
    local v = redis.call('HMGET', KEYS[1], f, f .. '@')
    if v[1] and tonumber(v[2]) == day then lvl = cap - tonumber(v[1]) end
    need = (day + 1) * 86400000 - now
  end
  free[i] = lvl
  if lvl < amt then
    if amt > cap then need = -1 end
    if failed == 0 or (wait ~= -1 and (need == -1 or need > wait)) then failed, wait = i, need end
  end
end
local out = {0, failed, math.ceil(wait)}
local leased, sizes = 0, 4 + n * 5
if failed == 0 and ARGV[sizes + 1] then
  leased = 1
  for i = 1, n do
    local b = 4 + (i - 1) * 5
    local size = tonumber(ARGV[sizes + i])
    if free[i] - tonumber(ARGV[b + 5]) - size < tonumber(ARGV[b + 3]) * """ + repr(LEASE_FLOOR) + """ then
      leased = 0
    end
  end
end
if failed == 0 then
  out[1] = 1
  local h = {}
  for i = 1, n do
    local b = 4 + (i - 1) * 5
    local kind, f, cap, amt = ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 3]), tonumber(ARGV[b + 5])
    if kind == 'b' then
      if leased == 1 then amt = amt + tonumber(ARGV[sizes + i]) end
      h[#h + 1], h[#h + 2], h[#h + 3], h[#h + 4] = f, free[i] - amt, f .. '@', now
    elseif kind == 's' and amt > 0 then
      redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
      redis.call('PEXPIRE', KEYS[2], ARGV[3])
    elseif kind == 'd' then
      h[#h + 1], h[#h + 2], h[#h + 3], h[#h + 4] = f, cap - free[i] + amt, f .. '@', day
    end
    free[i] = free[i] - amt
  end
  if #h > 0 then redis.call('HSET', KEYS[1], unpack(h)) end
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
if ARGV[sizes + 1] then
  local h = {}
  for i = 1, n do
    if held[i] then
      local f = ARGV[4 + (i - 1) * 5 + 2]
      local keep = math.max(0, held[i] - tonumber(ARGV[sizes + n + i]))
      if leased == 1 then
        h[#h + 1], h[#h + 2], h[#h + 3], h[#h + 4] = f .. '~', keep + tonumber(ARGV[sizes + i]), f .. '~@',
          now + tonumber(ARGV[sizes + 2 * n + 1])
      else
        h[#h + 1], h[#h + 2] = f .. '~', keep
      end
    end
  end
  if #h > 0 then
    redis.call('HSET', KEYS[1], unpack(h))
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
  end
end
for i = 1, n do out[3 + i] = math.floor(free[i]) end
out[4 + n] = leased
return out
"""

# Settlements and lessons, in order, in one call (one TIME). Each operation takes two KEYS and starts its
# ARGV with its name:
# - settle: KEYS hash, slots zset. ARGV 's', n, member, hash_ttl_ms, then n x (kind, field, capacity,
#   rate per ms, delta).
# - learn: KEYS hash, cooldown flag. ARGV 'l', n, cooldown_ms, hash_ttl_ms, then n x (field, capacity,
#   rate per ms, level): each bucket is lowered to its level (never raised); a pause is never shortened.
# - give back a lease: KEYS hash, (unused). ARGV 'r', n, hash_ttl_ms, then n x (field, capacity, rate per
#   ms, rest, granted): the unused rest goes back to the bucket and the lease's grants leave the held figure.
APPLY = PRELUDE + """
local function settle(h, s, a)
  local n = tonumber(ARGV[a + 1])
  for i = 1, n do
    local b = a + 4 + (i - 1) * 5
    local kind, f, delta = ARGV[b], ARGV[b + 1], tonumber(ARGV[b + 4])
    if kind == 's' then
      redis.call('ZREM', s, ARGV[a + 2])
    elseif delta ~= 0 and kind == 'b' then
      local cap = tonumber(ARGV[b + 2])
      local lvl, held = bucket(h, f, cap, tonumber(ARGV[b + 3]))
      redis.call('HSET', h, f, math.min(cap - held, lvl + delta), f .. '@', now)
    elseif delta ~= 0 then
      local v = redis.call('HMGET', h, f, f .. '@')
      if v[1] and tonumber(v[2]) == day then
        redis.call('HSET', h, f, math.max(0, tonumber(v[1]) - delta))
      end
    end
  end
  redis.call('PEXPIRE', h, ARGV[a + 3])
  return a + 4 + n * 5
end
local function learn(h, c, a)
  local n, lowered = tonumber(ARGV[a + 1]), false
  for i = 1, n do
    local b = a + 4 + (i - 1) * 4
    local f, level = ARGV[b], tonumber(ARGV[b + 3])
    if level < bucket(h, f, tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])) then
      redis.call('HSET', h, f, level, f .. '@', now)
      lowered = true
    end
  end
  if lowered then redis.call('PEXPIRE', h, ARGV[a + 3]) end
  local ms = tonumber(ARGV[a + 2])
  if ms > 0 and redis.call('PTTL', c) < ms then redis.call('SET', c, '1', 'PX', ms) end
  return a + 4 + n * 4
end
local function give_back(h, a)
  local n = tonumber(ARGV[a + 1])
  for i = 1, n do
    local b = a + 3 + (i - 1) * 5
    local f, cap, rest, granted = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
    local lvl, held = bucket(h, f, cap, tonumber(ARGV[b + 2]))
    held = math.max(0, held - granted)
    redis.call('HSET', h, f, math.min(cap - held, lvl + rest), f .. '@', now, f .. '~', held)
  end
  redis.call('PEXPIRE', h, ARGV[a + 2])
  return a + 3 + n * 5
end
local a, k = 1, 1
while a <= #ARGV do
  local op = ARGV[a]
  if op == 's' then a = settle(KEYS[k], KEYS[k + 1], a)
  elseif op == 'r' then a = give_back(KEYS[k], a)
  else a = learn(KEYS[k], KEYS[k + 1], a) end
  k = k + 2
end
return 1
"""
