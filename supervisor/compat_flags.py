"""Every compatibility flag name Cloudflare's Workers runtime knows.

Cloudflare refuses an upload naming any other flag (workerd's
``No such compatibility flag: NAME``, a validation error, code 10021), so a
typo fails at deploy rather than silently doing nothing. The names are each
``$compatEnableFlag`` and ``$compatDisableFlag`` of workerd's
``src/workerd/io/compatibility-date.capnp`` (cloudflare/workerd at
6552d999c79e, 2026-08-22: 329 names), the source Cloudflare's
compatibility-flags page documents; a newer flag is added here when Cloudflare
ships it.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Enable and disable flag names alike (``nodejs_compat``, ``no_nodejs_compat``).
KNOWN_FLAGS: frozenset[str] = frozenset({
    "add_nodejs_compat_eol", "add_nodejs_compat_eol_v22", "add_nodejs_compat_eol_v23",
    "add_nodejs_compat_eol_v24", "allow_custom_ports", "allow_eval_during_startup", "allow_importable_env",
    "allow_insecure_inefficient_logged_eval", "allow_irrevocable_stub_storage",
    "assets_navigation_has_no_effect", "assets_navigation_prefers_asset_serving", "auto_grpc_convert",
    "bind_asynclocalstorage_snapshot_to_request", "blob_legacy_mime_type", "blob_standard_mime_type",
    "brotli_content_encoding", "cache_api_compat_flags", "cache_api_request_cf_overrides_cache_rules",
    "cache_no_cache_disabled", "cache_no_cache_enabled", "cache_option_disabled", "cache_option_enabled",
    "cache_reload_disabled", "cache_reload_enabled", "capture_async_api_throws", "cf_botmanagement_default",
    "connect_pass_through", "containers_pid_namespace", "cots_on_external_fetch",
    "crypto_preserve_public_exponent", "d1_binding_jsrpc", "delete_all_deletes_alarm",
    "delete_all_preserves_alarm", "diagnostics_channel_has_subscribers_getter", "disable_ctx_exports",
    "disable_email_sending_queuing", "disable_fast_jsg_struct", "disable_global_performance_classes",
    "disable_navigator_language", "disable_nodejs_child_process_module", "disable_nodejs_cluster_module",
    "disable_nodejs_console_module", "disable_nodejs_dgram_module", "disable_nodejs_domain_module",
    "disable_nodejs_fs_module", "disable_nodejs_http2_module", "disable_nodejs_http_modules",
    "disable_nodejs_http_server_modules", "disable_nodejs_inspector_module", "disable_nodejs_os_module",
    "disable_nodejs_perf_hooks_module", "disable_nodejs_process_v2", "disable_nodejs_punycode_module",
    "disable_nodejs_readline_module", "disable_nodejs_repl_module", "disable_nodejs_sqlite_module",
    "disable_nodejs_stream_wrap_module", "disable_nodejs_trace_events_module", "disable_nodejs_tty_module",
    "disable_nodejs_v8_module", "disable_nodejs_vm_module", "disable_nodejs_wasi_module",
    "disable_nodejs_worker_threads_module", "disable_python_check_rng_state",
    "disable_python_dedicated_snapshot", "disable_python_external_sdk", "disable_python_no_global_handlers",
    "disable_python_process_pth_files", "disable_python_request_headers_preserve_commas",
    "disable_python_workflows", "disable_request_signal", "disable_streams_nodejs_v24_compat",
    "disable_text_decoder_cjk_decoder", "disable_text_decoder_replace_surrogates",
    "disable_top_level_await_in_require", "disable_validate_workflow_entrypoint", "disable_weak_ref",
    "disallow_eval_during_startup", "disallow_importable_env",
    "do_not_bind_asynclocalstorage_snapshot_to-request", "do_not_capture_async_api_throws",
    "do_not_set_tostring_tag", "do_not_strip_bom_in_read_all_text", "dont_substitute_null_on_type_error",
    "durable_object_alarms", "durable_object_fetch_allows_relative_url",
    "durable_object_fetch_requires_full_url", "durable_object_get_existing", "durable_object_rename",
    "dynamic_dispatch_treat_exceptions_as_500", "dynamic_dispatch_tunnel_exceptions",
    "enable_abortsignal_rpc", "enable_ctx_exports", "enable_ctx_version_metadata",
    "enable_d1_with_sessions_api", "enable_email_sending_queuing", "enable_fast_jsg_struct",
    "enable_global_performance_classes", "enable_navigator_language", "enable_nodejs_child_process_module",
    "enable_nodejs_cluster_module", "enable_nodejs_console_module", "enable_nodejs_dgram_module",
    "enable_nodejs_domain_module", "enable_nodejs_fs_module", "enable_nodejs_global_timers",
    "enable_nodejs_http2_module", "enable_nodejs_http_modules", "enable_nodejs_http_server_modules",
    "enable_nodejs_inspector_local_dev", "enable_nodejs_inspector_module", "enable_nodejs_os_module",
    "enable_nodejs_perf_hooks_module", "enable_nodejs_process_v2", "enable_nodejs_punycode_module",
    "enable_nodejs_readline_module", "enable_nodejs_repl_module", "enable_nodejs_sqlite_module",
    "enable_nodejs_stream_wrap_module", "enable_nodejs_trace_events_module", "enable_nodejs_tty_module",
    "enable_nodejs_v8_module", "enable_nodejs_vm_module", "enable_nodejs_wasi_module",
    "enable_nodejs_worker_threads_module", "enable_python_external_sdk", "enable_request_signal",
    "enable_streams_nodejs_v24_compat", "enable_top_level_await_in_require",
    "enable_validate_workflow_entrypoint", "enable_version_api", "enable_weak_ref", "enable_web_file_system",
    "encoder_stream_spec_compliant_backpressure", "enhanced_error_serialization",
    "env_module_nullable_support", "experimental", "export_commonjs_default", "export_commonjs_namespace",
    "expose_draining_reader", "expose_global_message_channel", "fetch_iterable_type_support",
    "fetch_iterable_type_support_override_adjustment", "fetch_legacy_url", "fetch_refuses_unknown_protocols",
    "fetch_standard_url", "fetch_treats_unknown_protocols_as_http", "fetcher_has_get_put_delete",
    "fetcher_no_get_put_delete", "fixup-transform-stream-backpressure",
    "formdata_parser_converts_files_to_strings", "formdata_parser_supports_files",
    "global_fetch_private_origin", "global_fetch_strictly_public", "global_importscripts", "global_navigator",
    "handle_cross_request_promise_resolution", "html_rewriter_treats_esi_include_as_void_tag",
    "http_headers_getsetcookie", "ignore_custom_ports", "ignore_unrecognized_import_assertion",
    "immutable_api_prototypes", "increase_websocket_message_size", "internal_stream_byob_return_undefined",
    "internal_stream_byob_return_view", "internal_writable_stream_abort_clears_queue",
    "internal_writable_stream_abort_does_not_clear_queue", "js_rpc", "kv_direct_binding",
    "legacy_error_serialization", "legacy_module_registry", "memory_cache_delete", "minimal_subrequests",
    "mutable_api_prototypes", "new_module_registry", "no_brotli_content_encoding",
    "no_cache_api_compat_flags", "no_cache_api_request_cf_overrides_cache_rules",
    "no_cf_botmanagement_default", "no_containers_pid_namespace", "no_cots_on_external_fetch",
    "no_crypto_preserve_public_exponent", "no_diagnostics_channel_has_subscribers_getter",
    "no_encoder_stream_spec_compliant_backpressure", "no_env_module_nullable_support",
    "no_expose_global_message_channel", "no_fetch_iterable_type_support",
    "no_fetch_iterable_type_support_override_adjustment", "no_global_importscripts", "no_global_navigator",
    "no_handle_cross_request_promise_resolution", "no_http_headers_getsetcookie", "no_minimal_subrequests",
    "no_nodejs_als", "no_nodejs_compat", "no_nodejs_compat_v2", "no_nodejs_global_timers", "no_nodejs_zlib",
    "no_precise_timers", "no_python_workers_20250116", "no_python_workers_20260610",
    "no_python_workers_20260817", "no_python_workflows_implicit_dependencies", "no_queue_expose_error_codes",
    "no_queues_json_messages", "no_request_cf_overrides_cache_rules", "no_request_signal_passthrough",
    "no_resizable_array_buffer_in_blob", "no_rpc", "no_set_event_target_this",
    "no_spec_compliant_property_attributes", "no_strict_compression_checks", "no_strict_crypto_checks",
    "no_throw_on_not_implemented_tls_options", "no_unhandled_rejection_after_microtask_checkpoint",
    "no_unwrap_custom_thenables", "no_upper_case_all_http_methods", "no_urlsearchparams_delete_has_value_arg",
    "no_web_socket_compression", "no_websocket_close_reason_byte_limit", "no_websocket_standard_binary_type",
    "no_writable_stream_spec_compliant_writer", "nodejs_als", "nodejs_compat",
    "nodejs_compat_do_not_populate_process_env", "nodejs_compat_populate_process_env", "nodejs_compat_v2",
    "nodejs_zlib", "non_pedantic_wpt", "nonclass_entrypoint_reuses_ctx_across_invocations",
    "original-transform-stream-backpressure", "pedantic_wpt", "precise_timers", "python_check_rng_state",
    "python_dedicated_snapshot", "python_external_packages", "python_no_global_handlers",
    "python_process_pth_files", "python_request_headers_preserve_commas", "python_workers",
    "python_workers_20250116", "python_workers_20260610", "python_workers_20260817",
    "python_workers_development", "python_workers_durable_objects", "python_workers_force_new_vendor_path",
    "python_workflows", "python_workflows_implicit_dependencies", "queue_consumer_no_wait_for_wait_until",
    "queue_consumer_wait_for_wait_until", "queue_expose_error_codes", "queues_json_messages",
    "r2_internal_beta_bindings", "r2_list_honor_include", "r2_public_beta_bindings",
    "remove_nodejs_compat_eol", "remove_nodejs_compat_eol_v22", "remove_nodejs_compat_eol_v23",
    "remove_nodejs_compat_eol_v24", "replica_routing", "request_cf_overrides_cache_rules",
    "request_signal_passthrough", "require_returns_default_export", "require_returns_namespace",
    "resizable_array_buffer_in_blob", "response_redirect_url_original", "response_redirect_url_standard",
    "retain_authorization_on_cross_origin_redirect", "rpc", "rpc_params_dup_stubs",
    "rpc_params_transfer_stubs", "rtti_api", "service_binding_extra_handlers", "set_event_target_this",
    "set_forwardable_email_full_headers", "set_forwardable_email_single_headers", "set_tostring_tag",
    "spec_compliant_property_attributes", "streaming_tail_worker", "streams_auto_allocate_chunk_size_default",
    "streams_byob_reader_detaches_buffer", "streams_byob_reader_does_not_detach_buffer",
    "streams_disable_constructors", "streams_enable_constructors",
    "streams_no_default_auto_allocate_chunk_size", "strict_compression_checks", "strict_crypto_checks",
    "strip_authorization_on_cross_origin_redirect", "strip_bom_in_read_all_text",
    "substitute_null_on_type_error", "tail_worker_user_spans", "tcp_sockets_support",
    "text_decoder_cjk_decoder", "text_decoder_replace_surrogates", "throw_on_not_implemented_tls_options",
    "throw_on_unrecognized_import_assertion", "transformstream_disable_standard_constructor",
    "transformstream_enable_standard_constructor", "typescript_implemented_streams", "typescript_strip_types",
    "unhandled_rejection_after_microtask_checkpoint", "unique_ctx_per_invocation", "unsafe_module",
    "unsupported_process_actual_platform", "unwrap_custom_thenables", "upper_case_all_http_methods",
    "url_original", "url_standard", "urlpattern_original", "urlpattern_standard",
    "urlsearchparams_delete_has_value_arg", "vectorize_query_metadata_optional", "vectorize_query_original",
    "wasm_memory_discard", "web_socket_auto_reply_to_close", "web_socket_compression",
    "web_socket_manual_reply_to_close", "webgpu", "websocket_close_reason_byte_limit",
    "websocket_standard_binary_type", "workers_api_getters_setters_on_instance",
    "workers_api_getters_setters_on_prototype", "workflows_bindings_rpc",
    "workflows_disable_fast_engine_creation", "workflows_enable_fast_engine_creation",
    "workflows_preserve_non_retryable_error_message", "workflows_replace_non_retryable_error_message",
    "workflows_step_rollback", "writable_stream_spec_compliant_writer",
})


def enabled(date: str | None, flags: Iterable[str], flag: str, disable: str, since: str) -> bool:
    """Whether ``flag`` is on for a script of compatibility ``date`` and
    ``flags``: named, or its default ``since`` date reached, unless its
    ``disable`` flag is named (as workerd's compatibility-date.capnp reads
    them). A script with no date (Corral takes one) gets the newest behaviour."""
    if flag in flags:
        return True
    if disable in flags:
        return False
    return not date or date >= since
