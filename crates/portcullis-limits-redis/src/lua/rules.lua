-- Portcullis limiter, part 1 of 2: the arithmetic. The crate joins this file and operations.lua into one
-- script holding every state change of the Redis limiter (see the crate docs and operations.lua).
--
-- The rules are those of `portcullis_limits` (gcra.rs, bucket.rs, window.rs, scope.rs), transcribed with
-- the same integer arithmetic. Lua numbers are doubles, exact for integers below 2^53:
-- * window amounts (tokens and pico-units of money, u64 up to 1.8e19) are two limbs hi, lo in base 1e9
--   (value = hi * 1e9 + lo, 0 <= lo < 1e9), always passed as two values so that no table is built;
-- * times (ms), rates and counts stay below 2^53 within the domain the Rust side clamps limits to: a
--   GCRA TAT is kept as (ms, rem) = ms * rpm + rem ticks, never multiplied out, and token-bucket units
--   (60 000 per token) fit because the token rate is capped and a bucket's deficit (debt included) is
--   kept at most 2^52 units.
-- Every division goes through floordiv, which corrects the rounding of `/`.
--
-- A scope's state is an array `s` (its slots are listed in operations.lua): s[1..3] the GCRA, s[4..6]
-- and s[28] the token bucket, and a calendar window of 9 slots at s[10] (the day) and s[19] (the month),
-- with the quotas of its latest reservation at s[29] and s[33].
--
-- Cost matters here: Redis runs the script from the top on every call, so each function below is built
-- again per call, and each table, string conversion, function call and call into C costs more than the
-- arithmetic. Hence few functions, amounts as pairs of numbers rather than tables, and constants written
-- out (60000, 1e9) rather than captured.

-- floor(a / b) for integers a, b (b > 0) whose magnitudes are below 2^53.
local function floordiv(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  if r < 0 then
    q = q - 1
  elseif r >= b then
    q = q + 1
  end
  return q
end

-- u64 amounts -----------------------------------------------------------------------------------------
-- u64::MAX in limbs is 18446744073, 709551615.

-- a + b, stopping at u64::MAX like u64::saturating_add (the exact sum's hi stays far below 2^53).
local function add(ah, al, bh, bl)
  local hi, lo = ah + bh, al + bl
  if lo >= 1e9 then
    hi, lo = hi + 1, lo - 1e9
  end
  if hi > 18446744073 or (hi == 18446744073 and lo > 709551615) then
    return 18446744073, 709551615
  end
  return hi, lo
end

-- a - b, stopping at zero like u64::saturating_sub.
local function sub(ah, al, bh, bl)
  if ah < bh or (ah == bh and al <= bl) then
    return 0, 0
  end
  local hi, lo = ah - bh, al - bl
  if lo < 0 then
    hi, lo = hi - 1, lo + 1e9
  end
  return hi, lo
end

-- What a window that used u carries into the window `k` >= 1 windows after it, under its quota q
-- (window.rs `at`): u - k * q, stopping at zero; nothing under a zero quota (none). k * q is computed in
-- limbs: k is below 2^27 (the window index of a time below 2^53 ms), so with k split in base 1e4 every
-- partial product stays below 2^53.
local function carry(uh, ul, qh, ql, k)
  if (qh == 0 and ql == 0) or (uh == 0 and ul == 0) then
    return 0, 0
  end
  local hi = qh * k
  if hi > 18446744073 then
    -- k * q > u64::MAX >= u
    return 0, 0
  end
  -- ql * k = ql * k1 * 1e4 + ql * k0, and ql * k1 = bq * 1e5 + br, so ql * k1 * 1e4 = bq * 1e9 + br * 1e4.
  local k1 = floordiv(k, 10000)
  local a, b = ql * (k - k1 * 10000), ql * k1
  local aq, bq = floordiv(a, 1e9), floordiv(b, 100000)
  local lo = (a - aq * 1e9) + (b - bq * 100000) * 10000
  hi = hi + aq + bq
  if lo >= 1e9 then
    hi, lo = hi + 1, lo - 1e9
  end
  return sub(uh, ul, hi, lo)
end

-- Whether `amount` fits under `limit` in the window at w seen in window `index` (window.rs): used +
-- reserved + amount <= limit, the sum exact (`checked_add` in the in-memory limiter), with used and
-- reserved the limbs at slots k and k + 2 — or, if the stored window is over, what it carries into
-- `index` under its quota at q, nothing reserved. A limit whose hi is negative is no limit; a zero amount
-- always fits.
local function fits(s, w, k, q, index, ah, al, lh, ll)
  if lh < 0 or (ah == 0 and al == 0) then
    return true
  end
  local hi, lo = ah, al
  if index <= s[w] then
    hi, lo = hi + s[k] + s[k + 2], lo + s[k + 1] + s[k + 3]
  else
    local ch, cl = carry(s[k], s[k + 1], s[q], s[q + 1], index - s[w])
    hi, lo = hi + ch, lo + cl
  end
  if lo >= 2e9 then
    hi, lo = hi + 2, lo - 2e9
  elseif lo >= 1e9 then
    hi, lo = hi + 1, lo - 1e9
  end
  return hi < lh or (hi == lh and lo <= ll)
end

-- GCRA (gcra.rs) --------------------------------------------------------------------------------------
-- s[1] ms + s[2] ticks of 1/s[3] ms: the theoretical arrival time (TAT), written under rate s[3] (0: never
-- written). The emission interval is 60 000 ticks of 1/rpm ms.

-- The TAT in ticks of 1/rpm ms, converted (rounding up) if it was written under another rpm.
local function gcra_tat(s, rpm)
  local ms, rem, per = s[1], s[2], s[3]
  if per == rpm or per == 0 then
    return ms, rem
  end
  -- rem < per, so the converted remainder, ceil(rem * rpm / per), is at most rpm.
  rem = -floordiv(-rem * rpm, per)
  if rem >= rpm then
    return ms + 1, 0
  end
  return ms, rem
end

-- nil if one request fits at now, else the wait in ms (rounded up).
local function gcra_check(s, rpm, burst, now)
  local ms, rem = gcra_tat(s, rpm)
  local d = ms - now
  -- Fits while the TAT is at most `tolerance` ticks ahead of now: d * rpm + rem, which is only
  -- computed when d is small enough for it to be exact (a TAT far ahead never fits).
  local tolerance = (burst - 1) * 60000
  if d < 0 or (d <= floordiv(tolerance, rpm) + 1 and d * rpm + rem <= tolerance) then
    return nil
  end
  -- ceil((d * rpm + rem - tolerance) / rpm)
  return d - floordiv(tolerance - rem, rpm)
end

local function gcra_take(s, rpm, now)
  local ms, rem = gcra_tat(s, rpm)
  if ms < now then
    ms, rem = now, 0
  end
  rem = rem + 60000
  local carry = floordiv(rem, rpm)
  s[1], s[2], s[3] = ms + carry, rem - carry * rpm, rpm
end

-- Token bucket (bucket.rs) ----------------------------------------------------------------------------
-- s[4]: the deficit in units of 1/60 000 token as of s[5] ms, above the capacity's units by an overrun's
-- debt (at most 2^52 units: a deeper one is kept as that); s[6]: tokens held by running requests; s[28]:
-- the capacity of the last take, which tells a debt from a lowered capacity.

-- Deficit refilled up to now at capacity `cap`. First, as of s[5], the part within the capacity of the
-- last take is cut to `cap` (a lowered capacity empties the bucket) while a debt beyond it stays whole.
-- Every amount here is at most 2^53, so exact.
local function bucket_deficit(s, cap, now)
  local deficit = s[4]
  local debt = deficit - s[28] * 60000
  if debt < 0 then
    debt = 0
  end
  if deficit > cap * 60000 + debt then
    deficit = cap * 60000 + debt
  end
  local elapsed = now - s[5]
  if elapsed > 0 then
    -- Rounding of a product above 2^53 keeps it above the (exact) deficit: the comparison stays right.
    local refilled = elapsed * cap
    if refilled >= deficit then
      deficit = 0
    else
      deficit = deficit - refilled
    end
  end
  return deficit
end

-- nil if `tokens` fit at now; 'never' if they exceed the capacity; else the wait in ms (a debt's
-- repayment included). A zero capacity admits zero tokens always: it could never repay a debt.
local function bucket_check(s, cap, tokens, now)
  if tokens > cap then
    return 'never'
  end
  if cap == 0 then
    return nil
  end
  local over = bucket_deficit(s, cap, now) + (tokens - cap) * 60000
  if over <= 0 then
    return nil
  end
  return -floordiv(-over, cap)
end

local function bucket_take(s, cap, tokens, now)
  s[4] = bucket_deficit(s, cap, now) + tokens * 60000
  if now > s[5] then
    s[5] = now
  end
  s[28] = cap
end

-- Calendar windows (window.rs) ------------------------------------------------------------------------
-- A window is 9 slots from w: its index, then tokens used, tokens reserved, cost used, cost reserved as
-- limbs; its quotas (tokens, cost: limbs, 0 for none) are 4 slots from q. Seen in window `index`, a later
-- stored window stays (a lagging caller's now) and an earlier one is over: it carries its excess over its
-- quota, less one quota per window since, and nothing reserved.

-- Makes the window at w (quotas at q) current for `index`. The quotas stay until a reservation sets them.
local function window_at(s, w, q, index)
  if index > s[w] then
    local k = index - s[w]
    local th, tl = carry(s[w + 1], s[w + 2], s[q], s[q + 1], k)
    local ch, cl = carry(s[w + 5], s[w + 6], s[q + 2], s[q + 3], k)
    s[w], s[w + 1], s[w + 2], s[w + 3], s[w + 4], s[w + 5], s[w + 6], s[w + 7], s[w + 8] = index, th, tl, 0, 0, ch, cl,
      0, 0
  end
end

-- Replaces a reservation of tokens t and cost c made in window `index` by the actual amounts, in full,
-- past the limit if need be. If that window is over, its reservation is charged to nothing and what the
-- actual exceeds it by to the current window.
local function window_settle(s, w, index, th, tl, ath, atl, ch, cl, ach, acl)
  if s[w] == index then
    s[w + 1], s[w + 2] = add(s[w + 1], s[w + 2], ath, atl)
    s[w + 3], s[w + 4] = sub(s[w + 3], s[w + 4], th, tl)
    s[w + 5], s[w + 6] = add(s[w + 5], s[w + 6], ach, acl)
    s[w + 7], s[w + 8] = sub(s[w + 7], s[w + 8], ch, cl)
  elseif s[w] > index then
    s[w + 1], s[w + 2] = add(s[w + 1], s[w + 2], sub(ath, atl, th, tl))
    s[w + 5], s[w + 6] = add(s[w + 5], s[w + 6], sub(ach, acl, ch, cl))
  end
end
