-- Portcullis limiter, part 2 of 2: the scope state in Redis, reservations and leases, and the operations
-- (see rules.lua for the arithmetic; the crate joins both files into one script).

local EXPIRE_BATCH = 100 -- overdue leases released per scope per call; the rest on the next call

-- Scope state ----------------------------------------------------------------------------------------

-- gt, gr, gp: GCRA TAT as (ms, rem) ticks of 1/gp ms (gp = 0: never written).
-- bd, bl: token-bucket deficit (units) as of bl (ms). br: bucket tokens held by running requests.
-- c: requests in flight. di / mi: day / month window index; d?? / m?? its counters (t = tokens,
-- c = cost; u = used, r = reserved).
local FIELDS = {'gt', 'gr', 'gp', 'bd', 'bl', 'br', 'c', 'di', 'dtu', 'dtr', 'dcu', 'dcr', 'mi', 'mtu', 'mtr', 'mcu',
  'mcr'}

local function window(index, tu, tr, cu, cr)
  return {i = num(index) or 0, tu = u(tu) or ZERO, tr = u(tr) or ZERO, cu = u(cu) or ZERO, cr = u(cr) or ZERO}
end

local function load(key)
  local v = redis.call('HMGET', key, unpack(FIELDS))
  return {
    gt = num(v[1]) or 0,
    gr = num(v[2]) or 0,
    gp = num(v[3]) or 0,
    bd = num(v[4]) or 0,
    bl = num(v[5]) or 0,
    br = num(v[6]) or 0,
    c = num(v[7]) or 0,
    day = window(v[8], v[9], v[10], v[11], v[12]),
    month = window(v[13], v[14], v[15], v[16], v[17]),
  }
end

local function save(key, s)
  local d, m = s.day, s.month
  redis.call('HSET', key, 'gt', fmt(s.gt), 'gr', fmt(s.gr), 'gp', fmt(s.gp), 'bd', fmt(s.bd), 'bl', fmt(s.bl),
    'br', fmt(s.br), 'c', fmt(s.c), 'di', fmt(d.i), 'dtu', ustr(d.tu), 'dtr', ustr(d.tr), 'dcu', ustr(d.cu),
    'dcr', ustr(d.cr), 'mi', fmt(m.i), 'mtu', ustr(m.tu), 'mtr', ustr(m.tr), 'mcu', ustr(m.cu), 'mcr', ustr(m.cr))
end

-- Extends a key's expiry to at least `ttl` ms; never shortens it. A missing key stays missing.
local function touch(key, ttl)
  local current = redis.call('PTTL', key)
  if current == -1 or (current >= 0 and current < ttl) then
    redis.call('PEXPIRE', key, ttl)
  end
end

-- Reservations ---------------------------------------------------------------------------------------

-- What one admission took from one scope: concurrency (1/0), bucket tokens ('-' = none), the day and
-- month windows, and the demand (tokens, cost).
local function encode_took(t)
  return table.concat({t.c, t.b and fmt(t.b) or '-', fmt(t.di), fmt(t.mi), ustr(t.tokens), ustr(t.cost)}, ' ')
end

local function decode_took(record)
  local f = {}
  for word in string.gmatch(record, '%S+') do
    f[#f + 1] = word
  end
  return {c = f[1], b = num(f[2] ~= '-' and f[2] or nil), di = tonumber(f[3]), mi = tonumber(f[4]), tokens = u(f[5]),
    cost = u(f[6])}
end

-- Gives back what `t` took (scope.rs `release`); nil actual amounts charge the whole demand.
local function release(s, t, actual_tokens, actual_cost)
  if t.c == '1' and s.c > 0 then
    s.c = s.c - 1
  end
  local tokens = actual_tokens or t.tokens
  local cost = actual_cost or t.cost
  if t.b then
    s.br = s.br - t.b
    if s.br < 0 then
      s.br = 0
    end
    bucket_refund(s, t.b - math.min(unum(tokens), t.b))
  end
  window_settle(s.day, t.di, t.tokens, tokens, t.cost, cost)
  window_settle(s.month, t.mi, t.tokens, tokens, t.cost, cost)
end

-- Releases, charging in full, the reservations of this scope whose lease ended before `wall`.
-- Returns true if the state changed.
local function expire(s, leases, holds, wall)
  local ids = redis.call('ZRANGEBYSCORE', leases, '-inf', '(' .. wall, 'LIMIT', 0, EXPIRE_BATCH)
  if #ids == 0 then
    return false
  end
  for _, id in ipairs(ids) do
    local record = redis.call('HGET', holds, id)
    if record then
      release(s, decode_took(record), nil, nil)
    end
  end
  redis.call('HDEL', holds, unpack(ids))
  redis.call('ZREM', leases, unpack(ids))
  return true
end

-- Admission (scope.rs `check` and `take`) ------------------------------------------------------------

local function limits_at(a)
  return {
    rpm = num(ARGV[a]),
    burst = num(ARGV[a + 1]),
    tpm = num(ARGV[a + 2]),
    max_concurrent = num(ARGV[a + 3]),
    tokens_day = u(ARGV[a + 4]),
    tokens_month = u(ARGV[a + 5]),
    budget_day = u(ARGV[a + 6]),
    budget_month = u(ARGV[a + 7]),
  }
end

-- Appends every refusal of this scope to `out` as (scope, kind, value): value is the wait in ms for
-- rates, '' for concurrency and never-fits, the window index for quotas (Rust turns it into a time).
local function check(s, L, d, scope, out)
  local function refuse(kind, value)
    out[#out + 1] = scope
    out[#out + 1] = kind
    out[#out + 1] = value
  end
  if L.rpm then
    local wait = gcra_check(s, L.rpm, L.burst, d.now)
    if wait then
      refuse('rpm', fmt(wait))
    end
  end
  if L.tpm then
    local wait = bucket_check(s, L.tpm, d.tokens_num, d.now)
    if wait == 'never' then
      refuse('tpm_never', '')
    elseif wait then
      refuse('tpm', fmt(wait))
    end
  end
  if L.max_concurrent and s.c >= L.max_concurrent then
    refuse('concurrent', '')
  end
  local day, month = window_at(s.day, d.day), window_at(s.month, d.month)
  if L.tokens_day and not fits(day.tu, day.tr, d.tokens, L.tokens_day) then
    refuse('tokens_day', fmt(day.i))
  end
  if L.tokens_month and not fits(month.tu, month.tr, d.tokens, L.tokens_month) then
    refuse('tokens_month', fmt(month.i))
  end
  if L.budget_day and not fits(day.cu, day.cr, d.cost, L.budget_day) then
    refuse('budget_day', fmt(day.i))
  end
  if L.budget_month and not fits(month.cu, month.cr, d.cost, L.budget_month) then
    refuse('budget_month', fmt(month.i))
  end
end

local function take(s, L, d)
  if L.rpm then
    gcra_take(s, L.rpm, d.now)
  end
  local took = {c = '0', tokens = d.tokens, cost = d.cost}
  if L.tpm then
    bucket_take(s, L.tpm, d.tokens_num, d.now)
    s.br = s.br + d.tokens_num
    took.b = d.tokens_num
  end
  if L.max_concurrent then
    s.c = s.c + 1
    took.c = '1'
  end
  s.day = window_at(s.day, d.day)
  s.day.tr = uadd(s.day.tr, d.tokens)
  s.day.cr = uadd(s.day.cr, d.cost)
  s.month = window_at(s.month, d.month)
  s.month.tr = uadd(s.month.tr, d.tokens)
  s.month.cr = uadd(s.month.cr, d.cost)
  took.di, took.mi = s.day.i, s.month.i
  return took
end

-- Header values of this scope's rates after the admission ('' where the scope has no such rate).
local function rate_states(s, L, now, out)
  if L.rpm then
    out[#out + 1] = fmt(gcra_remaining(s, L.rpm, L.burst, now))
    out[#out + 1] = fmt(gcra_reset(s, L.rpm, now))
  else
    out[#out + 1] = ''
    out[#out + 1] = ''
  end
  if L.tpm then
    out[#out + 1] = fmt(bucket_available(s, L.tpm, now))
    out[#out + 1] = fmt(bucket_reset(s, L.tpm, now))
  else
    out[#out + 1] = ''
    out[#out + 1] = ''
  end
end

-- ARGV: admit, now, wall, deadline, id, tokens, cost, day, month, ttl, then 8 limits per scope
-- (rpm, burst, tpm, max_concurrent, tokens_day, tokens_month, budget_day, budget_month; '' = none).
-- Returns {'ok', per scope: requests remaining, reset, tokens remaining, reset} or
-- {'deny', (scope, kind, value)...} with scopes counted from 0 in KEYS order.
local function admit()
  local d = {
    now = tonumber(ARGV[2]),
    tokens = u(ARGV[6]),
    tokens_num = tonumber(ARGV[6]),
    cost = u(ARGV[7]),
    day = tonumber(ARGV[8]),
    month = tonumber(ARGV[9]),
  }
  local wall, deadline, id, ttl = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[10])
  local n = #KEYS / 3
  local states, limits, dirty, refusals = {}, {}, {}, {}
  for i = 1, n do
    local s = load(KEYS[3 * i - 2])
    dirty[i] = expire(s, KEYS[3 * i - 1], KEYS[3 * i], wall)
    states[i], limits[i] = s, limits_at(11 + 8 * (i - 1))
    check(s, limits[i], d, fmt(i - 1), refusals)
  end
  if #refusals > 0 then
    for i = 1, n do
      if dirty[i] then
        save(KEYS[3 * i - 2], states[i])
      end
    end
    table.insert(refusals, 1, 'deny')
    return refusals
  end
  local out = {'ok'}
  for i = 1, n do
    local s, L = states[i], limits[i]
    local took = take(s, L, d)
    save(KEYS[3 * i - 2], s)
    redis.call('HSET', KEYS[3 * i], id, encode_took(took))
    redis.call('ZADD', KEYS[3 * i - 1], deadline, id)
    for k = 3 * i - 2, 3 * i do
      touch(KEYS[k], ttl)
    end
    rate_states(s, L, d.now, out)
  end
  return out
end

-- ARGV: settle, wall, id, actual tokens, actual cost ('' = charge the whole demand), ttl.
-- Returns how many scopes still held the reservation (0 when its lease had expired).
local function settle()
  local wall, id, ttl = ARGV[2], ARGV[3], tonumber(ARGV[6])
  local tokens, cost = u(ARGV[4]), u(ARGV[5])
  local found = 0
  for i = 1, #KEYS / 3 do
    local key, leases, holds = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
    local s = load(key)
    local dirty = expire(s, leases, holds, wall)
    local record = redis.call('HGET', holds, id)
    if record then
      release(s, decode_took(record), tokens, cost)
      redis.call('HDEL', holds, id)
      redis.call('ZREM', leases, id)
      found = found + 1
      dirty = true
    end
    if dirty then
      save(key, s)
      touch(key, ttl)
    end
  end
  return fmt(found)
end

-- ARGV: renew, deadline, min ttl, then per scope: count, ids. Moves the lease deadline of reservations
-- that are still held (XX: an expired one is not brought back).
local function renew()
  local deadline, ttl = ARGV[2], tonumber(ARGV[3])
  local a = 4
  local renewed = 0
  for i = 1, #KEYS / 3 do
    local count = tonumber(ARGV[a])
    local args = {}
    for k = 1, count do
      args[#args + 1] = deadline
      args[#args + 1] = ARGV[a + k]
    end
    a = a + count + 1
    if count > 0 then
      renewed = renewed + redis.call('ZADD', KEYS[3 * i - 1], 'XX', 'CH', unpack(args))
      for k = 3 * i - 2, 3 * i do
        touch(KEYS[k], ttl)
      end
    end
  end
  return fmt(renewed)
end

-- ARGV: snapshot, now, wall, day, month, rpm, burst, tpm ('' = none).
-- Returns requests remaining, reset; tokens remaining, reset, held by running requests; in flight;
-- then for the day and the month: window index, tokens used, reserved, cost used, reserved.
local function snapshot()
  local now, wall = tonumber(ARGV[2]), ARGV[3]
  local day_index, month_index = tonumber(ARGV[4]), tonumber(ARGV[5])
  local L = {rpm = num(ARGV[6]), burst = num(ARGV[7]), tpm = num(ARGV[8])}
  local s = load(KEYS[1])
  if expire(s, KEYS[2], KEYS[3], wall) then
    save(KEYS[1], s)
  end
  local out = {}
  rate_states(s, L, now, out)
  out[#out + 1] = fmt(s.br)
  out[#out + 1] = fmt(s.c)
  for _, w in ipairs({window_at(s.day, day_index), window_at(s.month, month_index)}) do
    out[#out + 1] = fmt(w.i)
    out[#out + 1] = ustr(w.tu)
    out[#out + 1] = ustr(w.tr)
    out[#out + 1] = ustr(w.cu)
    out[#out + 1] = ustr(w.cr)
  end
  return out
end

-- ARGV: seed, wall, day, month, day tokens, day cost, month tokens, month cost, ttl.
-- Redis is shared by every replica and may be more current than the store: used becomes
-- max(current, seeded) in the windows of now; reservations stay.
local function seed()
  local wall, ttl = ARGV[2], tonumber(ARGV[9])
  local s = load(KEYS[1])
  expire(s, KEYS[2], KEYS[3], wall)
  s.day = window_at(s.day, tonumber(ARGV[3]))
  s.day.tu = umax(s.day.tu, u(ARGV[5]))
  s.day.cu = umax(s.day.cu, u(ARGV[6]))
  s.month = window_at(s.month, tonumber(ARGV[4]))
  s.month.tu = umax(s.month.tu, u(ARGV[7]))
  s.month.cu = umax(s.month.cu, u(ARGV[8]))
  save(KEYS[1], s)
  touch(KEYS[1], ttl)
  return 'ok'
end

-- ARGV: limbs, op, a, b — the u64 helpers on their own, for the crate's tests.
local function limbs()
  local op, a, b = ARGV[2], u(ARGV[3]), u(ARGV[4])
  if op == 'add' then
    return ustr(uadd(a, b))
  elseif op == 'sub' then
    return ustr(usub(a, b))
  elseif op == 'cmp' then
    return fmt(ucmp(a, b))
  elseif op == 'fits' then
    return fits(a, ZERO, b, u(ARGV[5])) and '1' or '0'
  end
  return redis.error_reply('unknown limbs op')
end

local operations = {admit = admit, settle = settle, renew = renew, snapshot = snapshot, seed = seed, limbs = limbs}
local operation = operations[ARGV[1]]
if not operation then
  return redis.error_reply('portcullis limiter: unknown operation ' .. tostring(ARGV[1]))
end
return operation()
