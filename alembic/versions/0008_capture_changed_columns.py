"""Table change capture: an UPDATE's `changed` list compared column by column.

`pgcast.capture_changes()` (migration 0004) listed an UPDATE's changed columns by looking
each one up in the old and the new row's JSON object. Each included column now travels
through the old/new join on its own and is compared as `to_jsonb(column)` (JSON null for
SQL NULL, as inside the row's object), which gives the same answer at a fraction of the
cost: a captured 100,000-row UPDATE spent most of its trigger time on those lookups. Only
the UPDATE branch changes; the function is restated whole, as a migration must.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        r"""
        CREATE OR REPLACE FUNCTION pgcast.capture_changes() RETURNS trigger
        LANGUAGE plpgsql AS $fn$
        DECLARE
            topic text := TG_ARGV[0];
            wanted text[];      -- configured columns; NULL means every column
            key_cols text[];
            included text[];    -- columns that appear in the event rows, in table order
            excluded text[];    -- columns removed from to_jsonb(row) when `wanted` is set
            row_sql text;
            key_sql text;
            key_select text;
            order_sql text;
            join_sql text;
            changed_sql text;
            side_sql text;
            pair_order_sql text;
            column_select text;    -- UPDATE: the included columns as c1, c2 ...
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
            IF key_cols IS NULL THEN
                key_cols := ARRAY(SELECT jsonb_array_elements_text(TG_ARGV[2]::jsonb));
            END IF;

            -- Columns are resolved per statement: added and dropped columns need no reinstall.
            SELECT coalesce(array_agg(attname::text ORDER BY attnum)
                                FILTER (WHERE wanted IS NULL OR attname::text = ANY (wanted)),
                            '{}'),
                   coalesce(array_agg(attname::text)
                                FILTER (WHERE wanted IS NOT NULL AND attname::text <> ALL (wanted)),
                            '{}')
              INTO included, excluded
              FROM pg_attribute
             WHERE attrelid = TG_RELID AND attnum > 0 AND NOT attisdropped;

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
    )
