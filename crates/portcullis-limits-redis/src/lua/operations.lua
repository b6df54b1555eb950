-- Portcullis limiter, part 2 of 2: the scope state in Redis, reservations and leases, and the operations
-- (see rules.lua for the arithmetic; the crate joins both files into one script).
--
-- KEYS: the state of each scope, then the lease set of each scope in the same order. ARGV[1] names the
-- operation; ARGV[2] holds its numbers as little-endian doubles, packed by Rust (parsing decimal text
-- costs Lua more than an admission's arithmetic), starting with now (the caller's ms: limit math and key
-- expiry), wall (the caller's wall clock: leases) and expire_at (in now's ms: the keys written must live
-- until then); u64 amounts come as limbs hi, lo, and an absent limit as -1 (its hi for an amount). The
-- operation's text arguments follow. Replies hold integers (-1 where a value is absent) and lease
-- members.
--
-- Every operation first expires the overdue leases of the scopes it touches, then does its work; Redis
-- runs a script atomically, so an admission checks every scope and then applies to all of them, or
-- applies nothing. Header values (requests and tokens remaining, reset times) are not computed here:
-- the reply carries the raw GCRA and bucket state and Rust derives them, off Redis's single thread.

-- Every operation's first three numbers, which it unpacks with its own.
local NOW, WALL, EXPIRE_AT

-- Scope state -----------------------------------------------------------------------------------------
-- One string of 36 little-endian doubles, read into an array s:
--   s[1..3]   GCRA: TAT ms, remainder ticks, the rpm it was written under (0: never)
--   s[4..6]   token bucket: deficit (units, a debt included) as of ms; tokens held by running requests
--   s[7]      requests in flight
--   s[8]      the expiry the scope's keys were last given (now's ms)
--   s[9]      no lease in the set ends before this (wall ms; inf when it held none)
--   s[10..18] day window: index; tokens used, tokens reserved, cost used, cost reserved (limbs)
--   s[19..27] month window, the same
--   s[28]     token bucket: the capacity of its last take
--   s[29..32] the day window's quotas at its latest reservation: tokens, cost (limbs; 0: none)
--   s[33..36] the month window's, the same

-- The states in KEYS[first..last], read in one call.
local function load(first, last)
  local states = redis.call('MGET', unpack(KEYS, first, last))
  for i = 1, #states do
    local blob = states[i]
    -- A missing state has s[9] = 0: its lease set expires on its own and may outlive it, so look.
    states[i] = blob and {struct.unpack('<dddddddddddddddddddddddddddddddddddd', blob)} or
      {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
  end
  return states
end

-- Until when (now's ms) the window with used at k and quota at q keeps something against the scope: an
-- excess over its quota is carried until the windows after it (each at most `len` ms) have repaid it.
-- 0 when it carries nothing.
local function window_keeps(s, k, q, len)
  local quota, used = s[q] * 1e9 + s[q + 1], s[k] * 1e9 + s[k + 1]
  if quota > 0 and used > quota then
    return NOW + (used / quota + 3) * len
  end
  return 0
end

-- The expiry the scope's keys need (now's ms): EXPIRE_AT, or later while the state holds a token debt
-- (until it is repaid, at the rate of the bucket's last take) or a window's excess (until it is repaid),
-- plus a day, rounded up to an hour. It only has to be late enough, so doubles' rounding is harmless.
local function outlive(s)
  local at = EXPIRE_AT
  local cap = s[28]
  if cap > 0 and s[4] > cap * 60000 then
    at = math.max(at, s[5] + s[4] / cap + 86400000)
  end
  at = math.max(at, window_keeps(s, 11, 29, 86400000), window_keeps(s, 15, 31, 86400000),
    window_keeps(s, 20, 33, 2678400000), window_keeps(s, 24, 35, 2678400000))
  if at > EXPIRE_AT then
    at = math.ceil(math.min(at, NOW + 2 ^ 52) / 3600000) * 3600000
  end
  return at
end

-- Writes the state and keeps the scope's keys alive until `expire_at` (default EXPIRE_AT). Usually the
-- state is overwritten in place, keeping its expiry (SETRANGE: it always has the same length). When the
-- expiry the keys were last given falls short (a new scope, for most scopes the first write of a month,
-- and a debt or carried excess that outlasts it), both get the new one, and the lease set its end
-- marker: a member '' scored +inf, so that the set is never emptied and deleted, and never created again
-- without an expiry. An expiry is never shortened.
local function store(key, leases, s, expire_at)
  expire_at = expire_at or EXPIRE_AT
  local extend = s[8] < expire_at
  if extend then
    s[8] = expire_at
  end
  local blob = struct.pack('<dddddddddddddddddddddddddddddddddddd', unpack(s, 1, 36))
  if not extend then
    redis.call('SETRANGE', key, '0', blob)
    return
  end
  local ttl = string.format('%d', expire_at - NOW)
  redis.call('SET', key, blob, 'PX', ttl)
  redis.call('ZADD', leases, '+inf', '')
  redis.call('PEXPIRE', leases, ttl)
end

-- Reservations and leases -----------------------------------------------------------------------------
-- A lease member is 8 little-endian doubles and the reservation id: what the reservation took from this
-- scope — its concurrency slot (1/0), bucket tokens (-1: none), its day and month window — then the
-- demand's tokens and cost as limbs. With the id it is longer than 64 bytes, which keeps Redis from
-- storing a lease set as a listpack, whose operations are linear in its size. The set scores a member
-- by its lease deadline (wall ms).

-- Gives back what a lease member took (scope.rs `release`), charging the actual amounts in full, or when
-- `ath` is nil the whole reservation.
local function release(s, member, ath, atl, ach, acl)
  local c, b, di, mi, th, tl, ch, cl = struct.unpack('<dddddddd', member)
  if not ath then
    ath, atl, ach, acl = th, tl, ch, cl
  end
  if c == 1 and s[7] > 0 then
    s[7] = s[7] - 1
  end
  if b >= 0 then
    s[6] = math.max(s[6] - b, 0)
    -- The take of b becomes the actual count, as of s[5] (bucket.rs `refund` and `charge`): unused tokens
    -- back, tokens used beyond it below empty. As a double the actual count is exact below 2^53, and above
    -- any b beyond; a deficit is kept at most 2^52 units (MAX_TOKEN_DEFICIT tokens).
    local actual = ath * 1e9 + atl
    if actual < b then
      s[4] = math.max(s[4] - (b - actual) * 60000, 0)
    elseif actual > b then
      s[4] = math.min(s[4] + (actual - b) * 60000, 4503599627340000)
    end
  end
  window_settle(s, 10, di, th, tl, ath, atl, ch, cl, ach, acl)
  window_settle(s, 19, mi, th, tl, ath, atl, ch, cl, ach, acl)
end

-- Releases, charging in full, the reservations of this scope whose lease ended before WALL — up to 100
-- of them, the rest on the next call. Called only when s[9] (a lower bound of the deadlines) has
-- passed; then reads the set's earliest deadline again, and writes the state unless there is no set.
local function expire(s, key, leases)
  local members = redis.call('ZRANGEBYSCORE', leases, '-inf', string.format('(%d', WALL), 'LIMIT', 0, 100)
  if #members > 0 then
    for i = 1, #members do
      release(s, members[i])
    end
    redis.call('ZREM', leases, unpack(members))
  end
  local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
  s[9] = first[2] and tonumber(first[2]) or math.huge
  if first[1] or #members > 0 then
    store(key, leases, s, outlive(s))
  end
end

-- Appends a refusal to an admission's answer (made on the first).
local function refuse(out, scope, kind, value)
  out = out or {'deny'}
  local n = #out
  out[n + 1], out[n + 2], out[n + 3] = scope, kind, value
  return out
end

-- Appends a quota's refusal: the stored window's index, its used and reserved at u and u + 2 and its quota
-- at q (limbs), from which Rust tells a spent quota from one held by reservations, what is left, and the
-- first window the demand fits in (window.rs `refusal`).
local function refuse_quota(out, scope, kind, s, w, u, q)
  out = refuse(out, scope, kind, s[w])
  local n = #out
  out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5], out[n + 6] = s[u], s[u + 1], s[u + 2], s[u + 3], s[q],
    s[q + 1]
  return out
end

-- A configured quota (hi -1: none) as the state keeps it (0: none).
local function quota_of(hi, lo)
  if hi < 0 then
    return 0, 0
  end
  return hi, lo
end

-- The operations --------------------------------------------------------------------------------------

local operation, n = ARGV[1], #KEYS / 2

if operation == 'admit' then
  -- Numbers: now, wall, expire_at, lease deadline, day, month, demand tokens (limbs), cost (limbs), then
  -- per scope rpm, burst, tpm, max_concurrent, tokens_day, tokens_month, budget_day, budget_month (the
  -- last four as limbs): scope i's limits follow v[12 * i - 2]. ARGV[3]: the deadline as text;
  -- ARGV[4]: the lease members' common tail (demand and id).
  -- Returns {'ok', per scope: lease member, GCRA TAT ms, remainder, bucket deficit} or
  -- {'deny', (scope, kind, value...)...}: scopes counted from 0 in KEYS order, value the wait in ms for
  -- rates, -1 for concurrency and never fitting; for quotas seven values: the stored window's index, its
  -- used, reserved and quota (limbs), which Rust turns into a reason, what is left and a time.
  local v = {struct.unpack('<' .. string.rep('d', 10 + 12 * n), ARGV[2])}
  NOW, WALL, EXPIRE_AT = v[1], v[2], v[3]
  local deadline, day, month, th, tl, ch, cl = v[4], v[5], v[6], v[7], v[8], v[9], v[10]
  -- As a double the demand's tokens are exact below 2^53, and above any (clamped) bucket capacity beyond.
  local tokens = th * 1e9 + tl
  local states, refusals = load(1, n), nil
  for i = 1, n do
    local s, o = states[i], 12 * i - 2
    if s[9] < WALL then
      expire(s, KEYS[i], KEYS[n + i])
    end
    -- scope.rs `check`: every limit of this scope, each refusal noted.
    if v[o + 1] >= 0 then
      local wait = gcra_check(s, v[o + 1], v[o + 2], NOW)
      if wait then
        refusals = refuse(refusals, i - 1, 'rpm', wait)
      end
    end
    if v[o + 3] >= 0 then
      local wait = bucket_check(s, v[o + 3], tokens, NOW)
      if wait == 'never' then
        refusals = refuse(refusals, i - 1, 'tpm_never', -1)
      elseif wait then
        refusals = refuse(refusals, i - 1, 'tpm', wait)
      end
    end
    if v[o + 4] >= 0 and s[7] >= v[o + 4] then
      refusals = refuse(refusals, i - 1, 'concurrent', -1)
    end
    -- Quotas, in the window of now (with what an earlier one carries into it) or a later stored one.
    if v[o + 5] >= 0 and not fits(s, 10, 11, 29, day, th, tl, v[o + 5], v[o + 6]) then
      refusals = refuse_quota(refusals, i - 1, 'tokens_day', s, 10, 11, 29)
    end
    if v[o + 7] >= 0 and not fits(s, 19, 20, 33, month, th, tl, v[o + 7], v[o + 8]) then
      refusals = refuse_quota(refusals, i - 1, 'tokens_month', s, 19, 20, 33)
    end
    if v[o + 9] >= 0 and not fits(s, 10, 15, 31, day, ch, cl, v[o + 9], v[o + 10]) then
      refusals = refuse_quota(refusals, i - 1, 'budget_day', s, 10, 15, 31)
    end
    if v[o + 11] >= 0 and not fits(s, 19, 24, 35, month, ch, cl, v[o + 11], v[o + 12]) then
      refusals = refuse_quota(refusals, i - 1, 'budget_month', s, 19, 24, 35)
    end
  end
  if refusals then
    return refusals
  end
  -- Sized for three scopes (key, team, global) so that it is not regrown; the nils end the reply.
  local out = {'ok', nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil}
  for i = 1, n do
    -- scope.rs `take`: the demand from every limit, recorded in a lease member.
    local s, o = states[i], 12 * i - 2
    local c, b = 0, -1
    if v[o + 1] >= 0 then
      gcra_take(s, v[o + 1], NOW)
    end
    if v[o + 3] >= 0 then
      bucket_take(s, v[o + 3], tokens, NOW)
      s[6] = s[6] + tokens
      b = tokens
    end
    if v[o + 4] >= 0 then
      s[7] = s[7] + 1
      c = 1
    end
    if day > s[10] then
      window_at(s, 10, 29, day)
    end
    if month > s[19] then
      window_at(s, 19, 33, month)
    end
    s[13], s[14] = add(s[13], s[14], th, tl)
    s[17], s[18] = add(s[17], s[18], ch, cl)
    s[22], s[23] = add(s[22], s[23], th, tl)
    s[26], s[27] = add(s[26], s[27], ch, cl)
    -- The quotas in force: what these windows' excess will be measured against and repaid by.
    s[29], s[30] = quota_of(v[o + 5], v[o + 6])
    s[33], s[34] = quota_of(v[o + 7], v[o + 8])
    s[31], s[32] = quota_of(v[o + 9], v[o + 10])
    s[35], s[36] = quota_of(v[o + 11], v[o + 12])
    local member = struct.pack('<ddddc0', c, b, s[10], s[19], ARGV[4])
    redis.call('ZADD', KEYS[n + i], ARGV[3], member)
    if deadline < s[9] then
      s[9] = deadline
    end
    store(KEYS[i], KEYS[n + i], s)
    local k = 4 * i - 2
    out[k], out[k + 1], out[k + 2], out[k + 3] = member, s[1], s[2], s[4]
  end
  return out
elseif operation == 'settle' then
  -- Numbers: the actual tokens and cost as limbs (tokens hi -1: charge the whole demand). ARGV[3..]: the
  -- reservation's lease member in each scope. Returns how many scopes still held it (0 when its lease
  -- had expired).
  local ath, atl, ach, acl
  NOW, WALL, EXPIRE_AT, ath, atl, ach, acl = struct.unpack('<ddddddd', ARGV[2])
  if ath < 0 then
    ath = nil
  end
  local states, found = load(1, n), 0
  for i = 1, n do
    local s, key, leases, member = states[i], KEYS[i], KEYS[n + i], ARGV[2 + i]
    if s[9] < WALL then
      expire(s, key, leases)
    end
    if redis.call('ZREM', leases, member) == 1 then
      release(s, member, ath, atl, ach, acl)
      found = found + 1
      store(key, leases, s, outlive(s))
    end
  end
  return found
elseif operation == 'renew' then
  -- Numbers: per scope, how many of its lease members follow. ARGV[3]: the new deadline as text;
  -- ARGV[4..]: the members, scope after scope. Moves the deadline of leases that are still held (XX: an
  -- expired one is not brought back); later deadlines leave s[9] a lower bound, so the state is written
  -- only to keep the keys alive. Returns how many leases moved.
  local at
  NOW, WALL, EXPIRE_AT, at = struct.unpack('<ddd', ARGV[2])
  local m, renewed = 4, 0
  for i = 1, n do
    local count
    count, at = struct.unpack('<d', ARGV[2], at)
    if count > 0 then
      -- In batches, and each scope's state on its own: a process may hold leases in thousands of
      -- scopes, and unpack() of a long list would overflow Lua's C stack.
      for first = 0, count - 1, 1000 do
        local args = {}
        for k = first, math.min(first + 999, count - 1) do
          args[2 * (k - first) + 1], args[2 * (k - first) + 2] = ARGV[3], ARGV[m + k]
        end
        renewed = renewed + redis.call('ZADD', KEYS[n + i], 'XX', 'CH', unpack(args))
      end
      local s = load(i, i)[1]
      if s[8] < EXPIRE_AT then
        store(KEYS[i], KEYS[n + i], s)
      end
    end
    m = m + count
  end
  return renewed
elseif operation == 'snapshot' then
  -- One scope. Returns the raw state, which Rust sees in the windows of now: GCRA TAT ms, remainder, its
  -- rpm; bucket deficit, as of, the capacity of its last take; tokens held by running requests; in
  -- flight; then for the day and the month: window index, tokens used, reserved, cost used, reserved, the
  -- tokens quota and the cost quota (as limbs).
  NOW, WALL, EXPIRE_AT = struct.unpack('<ddd', ARGV[2])
  local s = load(1, 1)[1]
  if s[9] < WALL then
    expire(s, KEYS[1], KEYS[2])
  end
  return {s[1], s[2], s[3], s[4], s[5], s[28], s[6], s[7], s[10], s[11], s[12], s[13], s[14], s[15], s[16], s[17],
    s[18], s[29], s[30], s[31], s[32], s[19], s[20], s[21], s[22], s[23], s[24], s[25], s[26], s[27], s[33], s[34],
    s[35], s[36]}
elseif operation == 'seed' then
  -- One scope. Numbers: day, month, then tokens and cost used in the day and in the month (limbs). Redis
  -- is shared by every replica and may be more current than the store: used becomes max(current,
  -- seeded) in the windows of now; reservations stay.
  local seeded = {struct.unpack('<ddddddddddddd', ARGV[2])}
  NOW, WALL, EXPIRE_AT = seeded[1], seeded[2], seeded[3]
  local s = load(1, 1)[1]
  if s[9] < WALL then
    expire(s, KEYS[1], KEYS[2])
  end
  window_at(s, 10, 29, seeded[4])
  window_at(s, 19, 33, seeded[5])
  for j, k in ipairs({11, 15, 20, 24}) do
    local hi, lo = seeded[2 * j + 4], seeded[2 * j + 5]
    if s[k] < hi or (s[k] == hi and s[k + 1] < lo) then
      s[k], s[k + 1] = hi, lo
    end
  end
  store(KEYS[1], KEYS[2], s, outlive(s))
  return 'ok'
elseif operation == 'limbs' then
  -- The u64 helpers on their own, for the crate's tests. ARGV[3]: add, sub, cmp, fits or carry; numbers:
  -- a, b and for fits a limit, for carry a window count, as limbs. Returns limbs, or -1/0/1 for cmp, 1/0
  -- for fits.
  local _, _, _, ah, al, bh, bl, lh, ll = struct.unpack('<ddddddddd', ARGV[2])
  local op = ARGV[3]
  if op == 'add' then
    return {add(ah, al, bh, bl)}
  elseif op == 'sub' then
    return {sub(ah, al, bh, bl)}
  elseif op == 'cmp' then
    if ah == bh and al == bl then
      return 0
    end
    return (ah < bh or (ah == bh and al < bl)) and -1 or 1
  elseif op == 'fits' then
    -- a used in a window with nothing reserved, b to add
    return fits({0, ah, al, 0, 0}, 1, 2, 2, 0, bh, bl, lh, ll) and 1 or 0
  elseif op == 'carry' then
    -- a used in a window under quota b, l windows later
    return {carry(ah, al, bh, bl, lh * 1e9 + ll)}
  end
  return redis.error_reply('unknown limbs op')
end
return redis.error_reply('portcullis limiter: unknown operation ' .. tostring(operation))
