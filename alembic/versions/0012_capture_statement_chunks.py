"""Table capture stores a large statement's changes as chunks; readers build the events.

A captured statement wrote one `pgcast.events` row per changed row, with its JSON built in
the trigger, and the sequencer then stamped each of them: a 100,000-row UPDATE took about
0.15x the time of the same UPDATE on an uncaptured table. A statement that changes at
least 256 rows (of a capture without a column list, up to 16 MiB of rows a side) now
writes one row per 10,000 changes:

- `span` is how many changes the row holds, and so how many positions it takes; NULL on
  every other event (one position).
- `old_rows` and `new_rows` are the changed rows' text forms (`row::text`), in the order
  PostgreSQL changed them; element i of both is the same row before and after an UPDATE.
  An UPDATE takes this path only when both sides list the same primary keys in the same
  order, which makes pairing by index the same as pairing by key; otherwise, and for
  smaller statements, the trigger writes one event per change as before.
- `data` holds what reading them back needs: the table, its columns and their types when
  written, the primary key, and the writer's settings that decide how values print (the
  text forms themselves are written with settings that read back exactly).

The sequencer gives such a row `span` consecutive positions. `pgcast.chunk_events(seq,
after, upto)` turns the changes with positions in (after, upto] into events exactly as
the trigger used to: the rows are read back as the table's row type while its columns are
those they were written with, and field by field with the recorded types otherwise (or as
text, when even that fails), so a chunk never stops a reader. The view `pgcast.log`
lists the positioned log one event per row, for SQL that reads it.

Upgrading scans `pgcast.events` once to build the two small partial indexes below, while
publishes wait (0.15 s per million events here, the table in memory).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE pgcast.events
            ADD COLUMN span integer,
            ADD COLUMN old_rows text[],
            ADD COLUMN new_rows text[]
        """
    )
    # Readers find the chunk a position falls into with these (chunk rows only: small).
    # A chunk holds 1 to 10,000 changes: readers look for the chunk a position falls in
    # no further back than that (backend/connectors/store/log.py, CHUNK_CHANGES).
    op.execute(
        "ALTER TABLE pgcast.events ADD CONSTRAINT events_span_check"
        " CHECK (span BETWEEN 1 AND 10000) NOT VALID"
    )
    # Rows' text forms are stored as they are: compressing them cost the captured statement
    # more than it saved in writes.
    op.execute(
        "ALTER TABLE pgcast.events"
        " ALTER COLUMN old_rows SET STORAGE EXTERNAL, ALTER COLUMN new_rows SET STORAGE EXTERNAL"
    )
    op.execute("CREATE INDEX events_chunk_pos_idx ON pgcast.events (pos) WHERE span IS NOT NULL")
    op.execute(
        "CREATE INDEX events_chunk_topic_pos_idx ON pgcast.events (topic, pos)"
        " WHERE span IS NOT NULL"
    )
    op.execute(_CAPTURE_CHANGES)
    op.execute(_RECORD_FIELDS)
    op.execute(_CHUNK_FIELD_SQL)
    op.execute(_CHUNK_ROW_SQL)
    op.execute(_CHUNK_EVENTS)
    op.execute(_LOG_VIEW)
    op.execute(_SEQUENCE_PENDING)
    op.execute("DROP FUNCTION pgcast.sequence_returning(integer, bigint, double precision)")
    op.execute(_SEQUENCE_RETURNING)


_CAPTURE_CHANGES = r"""
CREATE OR REPLACE FUNCTION pgcast.capture_changes() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    topic text := TG_ARGV[0];
    chunk_size constant integer := 10000;  -- changes per chunk row
    chunk_from constant integer := 256;    -- fewer changes: one event row each
    -- The rows of a chunked statement are held in memory: beyond this many bytes a side
    -- as stored (16 MiB unless the session sets pgcast.capture_chunk_bytes), the
    -- set-based one-row-per-change path, which spills to disk, takes over.
    chunk_volume constant bigint :=
        coalesce(nullif(current_setting('pgcast.capture_chunk_bytes', true), '')::bigint,
                 16 * 1024 * 1024);
    wanted text[];      -- configured columns; NULL means every column
    key_cols text[];
    included text[];    -- columns that appear in the event rows, in table order
    excluded text[];    -- columns removed from to_jsonb(row) when `wanted` is set
    types bigint[];     -- the included columns' types: {type oid, typmod} each
    row_sql text;
    key_sql text;
    key_select text;
    order_sql text;
    join_sql text;
    changed_sql text;
    side_sql text;
    pair_order_sql text;
    column_select text;    -- UPDATE: the included columns as c1, c2 ...
    key_row text;          -- UPDATE: the key of r as one comparable value
    has_key boolean;       -- the table has a primary key now
    changes bigint;
    volume bigint;
    new_volume bigint;
    writer jsonb;          -- the writer's settings that decide how values print
    same_keys boolean;
    old_text text[];
    new_text text[];
    meta jsonb;
    appended bigint;
BEGIN
    IF TG_LEVEL <> 'STATEMENT' OR TG_WHEN <> 'AFTER' OR TG_NARGS <> 3 THEN
        RAISE EXCEPTION 'pgcast.capture_changes() must be installed by `pgcast capture add`';
    END IF;

    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO pgcast.events (topic, type, key, data)
            VALUES (topic, 'truncate', NULL, '{"new": null, "old": null}'::jsonb);
        PERFORM pg_notify('pgcast_pending', '');
        RETURN NULL;
    END IF;

    IF TG_ARGV[1] <> '' THEN
        wanted := ARRAY(SELECT jsonb_array_elements_text(TG_ARGV[1]::jsonb));
    END IF;

    -- The primary key as it is now, so renaming a key column keeps capture working;
    -- the key recorded at install time if the table has lost its primary key.
    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO key_cols
      FROM pg_index i
     CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = TG_RELID AND i.indisprimary AND k.ord <= i.indnkeyatts;
    has_key := key_cols IS NOT NULL;
    IF key_cols IS NULL THEN
        key_cols := ARRAY(SELECT jsonb_array_elements_text(TG_ARGV[2]::jsonb));
    END IF;

    -- Columns are resolved per statement: added and dropped columns need no reinstall.
    SELECT coalesce(array_agg(attname::text ORDER BY attnum)
                        FILTER (WHERE wanted IS NULL OR attname::text = ANY (wanted)),
                    '{}'),
           coalesce(array_agg(array[atttypid::bigint, atttypmod::bigint] ORDER BY attnum)
                        FILTER (WHERE wanted IS NULL OR attname::text = ANY (wanted)),
                    '{}'),
           coalesce(array_agg(attname::text)
                        FILTER (WHERE wanted IS NOT NULL AND attname::text <> ALL (wanted)),
                    '{}')
      INTO included, types, excluded
      FROM pg_attribute
     WHERE attrelid = TG_RELID AND attnum > 0 AND NOT attisdropped;

    -- A large statement of a capture without a column list, on a table with a primary
    -- key, is stored as chunks of its rows' text forms (migration 0012); the JSON is
    -- built by whoever reads them. Both sides list the rows in the order PostgreSQL
    -- changed them; an UPDATE's sides pair by index only if they list the same keys in
    -- the same order. The text forms are written with settings that read back exactly
    -- (ISO dates, numeric zone offsets, every float digit); the writer's own settings,
    -- which decide how the events print, are recorded.
    IF wanted IS NULL AND has_key THEN
        IF TG_OP = 'INSERT' THEN
            SELECT count(*), coalesce(sum(pg_column_size(r.*)), 0) INTO changes, volume
              FROM new_rows AS r;
        ELSE
            SELECT count(*), coalesce(sum(pg_column_size(r.*)), 0) INTO changes, volume
              FROM old_rows AS r;
            IF TG_OP = 'UPDATE' THEN
                SELECT coalesce(sum(pg_column_size(r.*)), 0) INTO new_volume FROM new_rows AS r;
                volume := greatest(volume, new_volume);
            END IF;
        END IF;
        IF changes >= chunk_from AND volume <= chunk_volume THEN
            writer := jsonb_build_object(
                'DateStyle', current_setting('DateStyle'),
                'IntervalStyle', current_setting('IntervalStyle'),
                'TimeZone', current_setting('TimeZone'),
                'extra_float_digits', current_setting('extra_float_digits'),
                'bytea_output', current_setting('bytea_output'),
                'lc_monetary', current_setting('lc_monetary'));
            PERFORM set_config('DateStyle', 'ISO, MDY', true),
                    set_config('IntervalStyle', 'postgres', true),
                    set_config('extra_float_digits', '3', true),
                    set_config('bytea_output', 'hex', true);
            -- Rows whose text forms are far larger than their stored forms can still
            -- outgrow one array; then the statement takes the one-row-per-change path.
            BEGIN
                IF TG_OP = 'INSERT' THEN
                    SELECT array_agg((r.*)::text) INTO new_text FROM new_rows AS r;
                    same_keys := true;
                ELSIF TG_OP = 'DELETE' THEN
                    SELECT array_agg((r.*)::text) INTO old_text FROM old_rows AS r;
                    same_keys := true;
                ELSE
                    IF cardinality(key_cols) = 1 THEN
                        key_row := format('r.%I', key_cols[1]);
                    ELSE
                        SELECT format('ROW(%s)', string_agg(format('r.%I', c), ', ' ORDER BY n))
                          INTO key_row
                          FROM unnest(key_cols) WITH ORDINALITY AS u(c, n);
                    END IF;
                    EXECUTE format(
                        'SELECT o.keys IS NOT DISTINCT FROM n.keys, o.rows, n.rows '
                        '  FROM (SELECT array_agg(%1$s) AS keys, array_agg((r.*)::text) AS rows '
                        '          FROM old_rows AS r) AS o, '
                        '       (SELECT array_agg(%1$s) AS keys, array_agg((r.*)::text) AS rows '
                        '          FROM new_rows AS r) AS n',
                        key_row)
                        INTO same_keys, old_text, new_text;
                END IF;
            EXCEPTION WHEN program_limit_exceeded OR out_of_memory OR internal_error THEN
                same_keys := false;
            END;
            PERFORM set_config('DateStyle', writer->>'DateStyle', true),
                    set_config('IntervalStyle', writer->>'IntervalStyle', true),
                    set_config('extra_float_digits', writer->>'extra_float_digits', true),
                    set_config('bytea_output', writer->>'bytea_output', true);
            IF same_keys THEN
                meta := jsonb_build_object(
                    'relation', TG_RELID::bigint,
                    'columns', to_jsonb(included),
                    'types', to_jsonb(types),
                    'key', to_jsonb(key_cols),
                    'settings', writer);
                INSERT INTO pgcast.events (topic, type, key, data, span, old_rows, new_rows)
                SELECT topic, lower(TG_OP), NULL, meta,
                       least(chunk_size, changes - g * chunk_size),
                       old_text[g * chunk_size + 1 : (g + 1) * chunk_size],
                       new_text[g * chunk_size + 1 : (g + 1) * chunk_size]
                  FROM generate_series(0, (changes - 1) / chunk_size) AS g
                 ORDER BY g;
                PERFORM pg_notify('pgcast_pending', '');
                RETURN NULL;
            END IF;
        END IF;
    END IF;

    -- `r.*` is the whole row even when the table has a column named `r`.
    row_sql := CASE WHEN wanted IS NULL THEN 'to_jsonb(r.*)' ELSE 'to_jsonb(r.*) - $2' END;
    IF cardinality(key_cols) = 1 THEN
        key_sql := format('r.%I::text', key_cols[1]);
    ELSE
        -- A compact JSON array: ["a",1].
        SELECT format('concat(%L, %s, %L)', '[',
                      string_agg(format('to_json(r.%I)::text', c), format(', %L, ', ',')
                                 ORDER BY n),
                      ']')
          INTO key_sql
          FROM unnest(key_cols) WITH ORDINALITY AS u(c, n);
    END IF;
    SELECT string_agg(format('r.%I AS k%s', c, n), ', ' ORDER BY n),
           string_agg(format('k%s', n), ', ' ORDER BY n),
           string_agg(format('coalesce(n.k%1$s, o.k%1$s)', n), ', ' ORDER BY n),
           string_agg(format('n.k%1$s = o.k%1$s', n), ' AND ' ORDER BY n)
      INTO key_select, order_sql, pair_order_sql, join_sql
      FROM unnest(key_cols) WITH ORDINALITY AS u(c, n);
    side_sql := 'SELECT ' || key_sql || ' AS key, ' || row_sql || ' AS j, ' || key_select;

    IF TG_OP = 'INSERT' THEN
        EXECUTE format(
            'INSERT INTO pgcast.events (topic, type, key, data) '
            'SELECT $1, %L, s.key, jsonb_build_object(%L, s.j, %L, NULL) '
            'FROM (%s FROM new_rows AS r) AS s ORDER BY %s',
            'insert', 'new', 'old', side_sql, order_sql)
            USING topic, excluded;
    ELSIF TG_OP = 'DELETE' THEN
        EXECUTE format(
            'INSERT INTO pgcast.events (topic, type, key, data) '
            'SELECT $1, %L, s.key, jsonb_build_object(%L, NULL, %L, s.j) '
            'FROM (%s FROM old_rows AS r) AS s ORDER BY %s',
            'delete', 'new', 'old', side_sql, order_sql)
            USING topic, excluded;
    ELSE
        -- UPDATE: old and new rows are paired by primary key. A row whose key changed
        -- has no partner and is reported as a delete (old key) plus an insert (new key).
        -- Each included column is compared as its own JSON value (JSON null for SQL
        -- NULL, as inside the row's object), carried through the join as c1, c2 ...
        -- rather than looked up in the two row objects.
        IF cardinality(included) = 0 THEN
            changed_sql := '''[]''::jsonb';
        ELSE
            SELECT format('to_jsonb(array_remove(ARRAY[%s]::text[], NULL))',
                          string_agg(format('CASE WHEN coalesce(to_jsonb(n.c%2$s), %3$L) '
                                            'IS DISTINCT FROM coalesce(to_jsonb(o.c%2$s), %3$L) '
                                            'THEN %1$L END', c, n, 'null'), ', ' ORDER BY n)),
                   ', ' || string_agg(format('r.%I AS c%s', c, n), ', ' ORDER BY n)
              INTO changed_sql, column_select
              FROM unnest(included) WITH ORDINALITY AS u(c, n);
            side_sql := side_sql || column_select;
        END IF;
        EXECUTE format(
            'INSERT INTO pgcast.events (topic, type, key, data) '
            'SELECT $1, '
            '  CASE WHEN o.key IS NULL THEN %1$L WHEN n.key IS NULL THEN %2$L ELSE %3$L END, '
            '  coalesce(n.key, o.key), '
            '  CASE WHEN o.key IS NULL THEN jsonb_build_object(%4$L, n.j, %5$L, NULL) '
            '       WHEN n.key IS NULL THEN jsonb_build_object(%4$L, NULL, %5$L, o.j) '
            '       ELSE jsonb_build_object(%4$L, n.j, %5$L, o.j, %6$L, %7$s) END '
            'FROM (%8$s FROM new_rows AS r) AS n FULL JOIN (%8$s FROM old_rows AS r) AS o '
            'ON %9$s ORDER BY %10$s',
            'insert', 'delete', 'update', 'new', 'old', 'changed', changed_sql,
            side_sql, join_sql, pair_order_sql)
            USING topic, excluded;
    END IF;
    GET DIAGNOSTICS appended = ROW_COUNT;
    IF appended > 0 THEN
        -- One wake-up per statement; identical notifications fold at commit.
        PERFORM pg_notify('pgcast_pending', '');
    END IF;
    RETURN NULL;
END $fn$;
"""

# record_out's syntax: fields between parentheses, separated by commas; an empty field is
# NULL; a field in double quotes doubles its quotes and backslashes.
_RECORD_FIELDS = r"""
CREATE FUNCTION pgcast.record_fields(record_text text) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT coalesce(array_agg(
               CASE WHEN m[1] = '' THEN NULL
                    WHEN left(m[1], 1) = '"' THEN
                        regexp_replace(replace(substr(m[1], 2, length(m[1]) - 2), '""', '"'),
                                       E'\\\\(.)', E'\\1', 'g')
                    ELSE m[1] END
               ORDER BY n), '{}')
      FROM regexp_matches(substr(record_text, 2, length(record_text) - 2) || ',',
                          E'("(?:[^"\\\\]|""|\\\\.)*"|[^,]*),', 'g') WITH ORDINALITY AS f(m, n)
$$;
"""

# One field of a chunk's row in the SQL chunk_events generates, read the way `attempt`
# says: 1 from the row type, 2 cast from its text with the recorded type, 3 the same when
# the type still accepts the text and the text otherwise, 4 the text. `form` is what the
# expression gives: 'jsonb' (the value in a row object), 'json' (an element of a compact
# key array) or 'text' (a one-column key).
_CHUNK_FIELD_SQL = r"""
CREATE FUNCTION pgcast.chunk_field_sql(
    attempt integer, side text, n integer, name text, type_name text, form text
) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN attempt = 3 THEN
            format('CASE WHEN pg_input_is_valid(x.%1$s[%2$s], %3$L) THEN %4$s ELSE %5$s END',
                   side, n, type_name,
                   format(template, format('(x.%s[%s])::%s', side, n, type_name)),
                   format(template, format('x.%s[%s]', side, n)))
        ELSE format(template,
                    CASE WHEN attempt = 1 THEN format('(x.%s).%I', side, name)
                         WHEN attempt = 2 THEN format('(x.%s[%s])::%s', side, n, type_name)
                         ELSE format('x.%s[%s]', side, n) END)
    END
      FROM (SELECT CASE form WHEN 'jsonb' THEN 'to_jsonb(%s)' WHEN 'json' THEN 'to_json(%s)::text'
                             ELSE '(%s)::text' END AS template) AS t
$$;
"""

# A chunk's row (side o or n) as a JSON object in the SQL chunk_events generates: the
# row type's own on attempt 1, else built from its fields, names and values as two arrays
# (a function call takes at most 100 arguments, so no jsonb_build_object).
_CHUNK_ROW_SQL = r"""
CREATE FUNCTION pgcast.chunk_row_sql(attempt integer, side text, cols text[], types text[])
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN attempt = 1 THEN format('to_jsonb(x.%s)', side) ELSE
        format('CASE WHEN x.%1$s IS NOT NULL THEN (SELECT jsonb_object_agg(f.k, f.v) '
               'FROM unnest(%2$L::text[], ARRAY[%3$s]::jsonb[]) AS f(k, v)) END',
               side, cols,
               (SELECT string_agg(pgcast.chunk_field_sql(attempt, side, u.n::integer, u.c,
                                                         types[u.n], 'jsonb'),
                                  ', ' ORDER BY u.n)
                  FROM unnest(cols) WITH ORDINALITY AS u(c, n))) END
$$;
"""

_CHUNK_EVENTS = r"""
CREATE FUNCTION pgcast.chunk_events(chunk bigint, after bigint, upto bigint DEFAULT NULL)
RETURNS TABLE (pos bigint, type text, key text, data_json text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    c record;
    old_text text[];
    new_text text[];
    cols text[];
    written bigint[];     -- {type oid, typmod} of each column when the rows were written
    types text[];         -- their names now, or text for a type that is gone
    key_cols text[];
    first_i bigint;
    last_i bigint;
    relation text;        -- the table, while its columns are the ones written
    side text;
    attempt integer;
    read_sql text;
    key_sql text;
    new_json text;
    old_json text;
    changed_sql text;
    data_sql text;
    keys text[];
    docs text[];
    setting record;
    saved jsonb := '{}';
BEGIN
    SELECT e.pos, e.span, e.type, e.data INTO c
      FROM pgcast.events e WHERE e.seq = chunk AND e.span IS NOT NULL;
    IF NOT FOUND OR c.pos IS NULL THEN
        RETURN;
    END IF;
    first_i := greatest(1, after - c.pos + 2);
    last_i := least(c.span, coalesce(upto - c.pos + 1, c.span));
    IF first_i > last_i THEN
        RETURN;
    END IF;
    SELECT e.old_rows[first_i::integer:last_i::integer], e.new_rows[first_i::integer:last_i::integer]
      INTO old_text, new_text
      FROM pgcast.events e WHERE e.seq = chunk;
    cols := ARRAY(SELECT jsonb_array_elements_text(c.data->'columns'));
    written := ARRAY(SELECT array[(t->>0)::bigint, (t->>1)::bigint]
                       FROM jsonb_array_elements(c.data->'types') AS t);
    key_cols := ARRAY(SELECT jsonb_array_elements_text(c.data->'key'));
    side := CASE c.type WHEN 'delete' THEN 'o' ELSE 'n' END;
    SELECT format('%I.%I', n.nspname, r.relname) INTO relation
      FROM pg_class r JOIN pg_namespace n ON n.oid = r.relnamespace
     WHERE r.oid = (c.data->>'relation')::oid
       AND (SELECT array_agg(a.attname::text ORDER BY a.attnum) = cols
                   AND array_agg(array[a.atttypid::bigint, a.atttypmod::bigint]
                                 ORDER BY a.attnum) = written
              FROM pg_attribute a
             WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped);
    types := ARRAY(SELECT coalesce(format_type(t.oid, written[n][2]::integer), 'text')
                     FROM generate_series(1, cardinality(cols)) AS n
                     LEFT JOIN pg_type t ON t.oid = written[n][1]::oid
                    ORDER BY n);

    -- Values print as they did in the writer's session.
    FOR setting IN
        SELECT s.key, s.value FROM jsonb_each_text(c.data->'settings') AS s
         WHERE s.key IN ('DateStyle', 'IntervalStyle', 'TimeZone', 'extra_float_digits',
                         'bytea_output', 'lc_monetary')
    LOOP
        saved := saved || jsonb_build_object(setting.key, current_setting(setting.key));
        BEGIN
            PERFORM set_config(setting.key, setting.value, true);
        EXCEPTION WHEN OTHERS THEN  -- a zone or locale this server does not have
            RAISE WARNING 'pgcast: captured changes at positions % to %: the writer''s % (%) is not available here (%)',
                c.pos + first_i - 1, c.pos + last_i - 1, setting.key, setting.value, SQLERRM;
        END;
    END LOOP;

    -- Four ways to read the rows back, each used when the one before cannot read them:
    -- as the table's row type (while its columns are the ones written); field by field
    -- with the recorded types (after an ALTER TABLE or a DROP); the same, with a value
    -- its type no longer accepts (a renamed enum label, a new domain constraint) kept as
    -- text; every field as text. The events are the trigger's before migration 0012: the
    -- row objects, the key as text or a compact JSON array, and an UPDATE's changed
    -- columns compared as JSON values.
    FOR attempt IN 1..4 LOOP
        CONTINUE WHEN attempt = 1 AND relation IS NULL;
        IF attempt = 1 THEN
            read_sql := format('u.o::%1$s AS o, u.n::%1$s AS n', relation);
        ELSE
            read_sql := 'pgcast.record_fields(u.o) AS o, pgcast.record_fields(u.n) AS n';
        END IF;
        IF cardinality(key_cols) = 1 THEN
            SELECT pgcast.chunk_field_sql(attempt, side, u.n::integer, u.c, types[u.n], 'text')
              INTO key_sql
              FROM unnest(cols) WITH ORDINALITY AS u(c, n) WHERE u.c = key_cols[1];
        ELSE
            SELECT format('concat(%L, %s, %L)', '[',
                          string_agg(pgcast.chunk_field_sql(attempt, side, u.n::integer, u.c,
                                                            types[u.n], 'json'),
                                     format(', %L, ', ',') ORDER BY k.ord),
                          ']')
              INTO key_sql
              FROM unnest(key_cols) WITH ORDINALITY AS k(name, ord)
              JOIN unnest(cols) WITH ORDINALITY AS u(c, n) ON u.c = k.name;
        END IF;
        new_json := pgcast.chunk_row_sql(attempt, 'n', cols, types);
        old_json := pgcast.chunk_row_sql(attempt, 'o', cols, types);
        SELECT format('to_jsonb(array_remove(ARRAY[%s]::text[], NULL))',
                      string_agg(format('CASE WHEN coalesce(%s, %L) '
                                        'IS DISTINCT FROM coalesce(%s, %L) THEN %L END',
                                        pgcast.chunk_field_sql(attempt, 'n', u.n::integer, u.c,
                                                               types[u.n], 'jsonb'), 'null',
                                        pgcast.chunk_field_sql(attempt, 'o', u.n::integer, u.c,
                                                               types[u.n], 'jsonb'), 'null',
                                        u.c),
                                 ', ' ORDER BY u.n))
          INTO changed_sql
          FROM unnest(cols) WITH ORDINALITY AS u(c, n);
        data_sql := CASE c.type
            WHEN 'insert' THEN format('jsonb_build_object(%L, %s, %L, NULL)',
                                      'new', new_json, 'old')
            WHEN 'delete' THEN format('jsonb_build_object(%L, NULL, %L, %s)',
                                      'new', 'old', old_json)
            ELSE format('jsonb_build_object(%L, %s, %L, %s, %L, %s)',
                        'new', new_json, 'old', old_json, 'changed', changed_sql) END;
        BEGIN
            EXECUTE format(
                'SELECT array_agg(y.k ORDER BY y.i), array_agg(y.d ORDER BY y.i) '
                '  FROM (SELECT x.i, %s AS k, (%s)::text AS d '
                '          FROM (SELECT u.i, %s '
                '                  FROM unnest($1::text[], $2::text[]) '
                '                       WITH ORDINALITY AS u(o, n, i) '
                '                OFFSET 0) AS x) AS y',
                key_sql, data_sql, read_sql)
                INTO keys, docs
                USING old_text, new_text;
            EXIT;
        EXCEPTION WHEN OTHERS THEN
            IF attempt = 4 THEN
                RAISE;
            END IF;
            RAISE WARNING 'pgcast: captured changes at positions % to % cannot be read that way (%); reading them again, field by field',
                c.pos + first_i - 1, c.pos + last_i - 1, SQLERRM;
        END;
    END LOOP;

    FOR setting IN SELECT * FROM jsonb_each_text(saved) LOOP
        PERFORM set_config(setting.key, setting.value, true);
    END LOOP;
    RETURN QUERY
        SELECT c.pos + first_i + u.i - 2, c.type, u.k, u.d
          FROM unnest(keys, docs) WITH ORDINALITY AS u(k, d, i);
END $fn$;
"""

# The positioned log one event per row, for SQL that reads it (operators, tests): a
# chunk row comes out as its changes. The server reads pages with the same expansion.
_LOG_VIEW = """
CREATE VIEW pgcast.log AS
SELECT e.pos, e.topic, e.type, e.key, e.data, e.created_at
  FROM pgcast.events e
 WHERE e.pos IS NOT NULL AND e.span IS NULL
UNION ALL
SELECT c.pos, e.topic, c.type, c.key, c.data_json::jsonb, e.created_at
  FROM pgcast.events e CROSS JOIN LATERAL pgcast.chunk_events(e.seq, e.pos - 1) AS c
 WHERE e.pos IS NOT NULL AND e.span IS NOT NULL
"""

_SEQUENCE_PENDING = """
CREATE OR REPLACE FUNCTION pgcast.sequence_pending(batch integer DEFAULT 10000) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    last bigint;
    head bigint;
BEGIN
    -- Cheap exit without the lock: a row committed after this check sends its own wake-up.
    IF NOT EXISTS (SELECT 1 FROM pgcast.events WHERE pos IS NULL) THEN
        RETURN 0;
    END IF;
    -- The row lock serializes sequencers across processes; it is held until commit,
    -- so positions become visible in the order they were assigned. A chunk row of a
    -- captured statement takes as many positions as it holds changes.
    SELECT last_pos INTO last FROM pgcast.log_state WHERE id = 1 FOR UPDATE;
    UPDATE pgcast.events AS e
       SET pos = last + p.upto - p.width + 1
      FROM (SELECT w.seq, coalesce(w.span, 1) AS width,
                   sum(coalesce(w.span, 1)) OVER (ORDER BY w.seq) AS upto
              FROM pgcast.events w WHERE w.pos IS NULL ORDER BY w.seq LIMIT batch) AS p
     WHERE e.seq = p.seq;
    SELECT max(e.pos + coalesce(e.span, 1) - 1) INTO head FROM pgcast.events e WHERE e.pos > last;
    IF head IS NOT NULL THEN
        UPDATE pgcast.log_state SET last_pos = head WHERE id = 1;
        PERFORM pg_notify('pgcast_events', head::text);
        RETURN head - last;
    END IF;
    RETURN 0;
END $$;
"""

_SEQUENCE_RETURNING = """
CREATE FUNCTION pgcast.sequence_returning(
    batch integer, budget bigint, lease double precision DEFAULT 0
)
RETURNS TABLE (
    pos bigint, topic text, type text, key text, data_json text,
    created_at timestamptz, stamped bigint, head bigint
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    last bigint;
    new_head bigint;
BEGIN
    -- Cheap exit without the lock, as in sequence_pending().
    IF NOT EXISTS (SELECT 1 FROM pgcast.events e WHERE e.pos IS NULL) THEN
        RETURN;
    END IF;
    SELECT s.last_pos INTO last FROM pgcast.log_state s WHERE s.id = 1 FOR UPDATE;
    -- Events are returned up to the first chunk row (its events are read from the log
    -- after the commit) and within the byte budget; a run that stamped positions but
    -- returns no event answers one row without a position.
    RETURN QUERY
        WITH moved AS (
            UPDATE pgcast.events AS e
               SET pos = last + p.upto - p.width + 1
              FROM (SELECT w.seq, coalesce(w.span, 1) AS width,
                           sum(coalesce(w.span, 1)) OVER (ORDER BY w.seq) AS upto
                      FROM pgcast.events w WHERE w.pos IS NULL
                     ORDER BY w.seq LIMIT batch) AS p
             WHERE e.seq = p.seq
            RETURNING e.pos, e.span, e.topic, e.type, e.key, e.data, e.created_at
        ), totals AS (
            SELECT max(m.pos + coalesce(m.span, 1) - 1) AS head,
                   min(m.pos) FILTER (WHERE m.span IS NOT NULL) AS first_chunk
              FROM moved m
        ), sized AS (
            SELECT m.*, sum(pg_column_size(m.data)) OVER (ORDER BY m.pos) AS upto
              FROM moved m
             WHERE m.span IS NULL
        )
        SELECT z.pos, z.topic, z.type, z.key, z.data::text, z.created_at,
               t.head - last, t.head
          FROM totals t
          LEFT JOIN sized z
            ON z.upto - pg_column_size(z.data) < budget
           AND (t.first_chunk IS NULL OR z.pos < t.first_chunk)
         WHERE t.head IS NOT NULL
         ORDER BY z.pos;
    -- Positions are dense and nobody else can stamp while the lock is held.
    SELECT max(e.pos + coalesce(e.span, 1) - 1) INTO new_head
      FROM pgcast.events e WHERE e.pos > last;
    IF new_head IS NOT NULL THEN
        UPDATE pgcast.log_state SET last_pos = new_head WHERE id = 1;
        IF lease > 0 THEN  -- this run's process polls until then
            UPDATE pgcast.sequencer_lease
               SET busy_until = clock_timestamp() + make_interval(secs => lease)
             WHERE id = 1;
        END IF;
        PERFORM pg_notify('pgcast_events', new_head::text);
    END IF;
END $$;
"""
